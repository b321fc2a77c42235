"""Fault injection: the failures real orgs and networks produce, on demand.

Faults are queued (`FaultInjector.add`) and consumed by the requests they target, or drawn
at random by a seeded chaos mode for soak tests. They are reachable from Python
(`emulator.faults`) and over HTTP (`/_emulator/v1/faults`, `/_emulator/v1/chaos`).

| kind | what the client sees |
|---|---|
| `drop` | the request is processed, then the connection closes with no response |
| `cut` | the request is processed, half the response is sent, then the connection closes |
| `http_503` | HTTP 503 "Server is too busy", nothing processed |
| `stall` | nothing for `seconds`, then the normal response |
| `unknown_client` | `403::Unknown client` (advice `handshake`, or `none` as some orgs send) |
| `deny_handshake` | `403::Handshake denied` with `ext.sfdc.failureReason` = `reason` |
| `auth_invalid` | `401::Authentication invalid` on `/meta/connect`, as after a revoked session |

Drop and cut lose what the response carried, exactly as on a real network: the server has
already moved the client's position past those events, so only a resubscribe from the last
processed replay id gets them back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FaultKind(StrEnum):
    DROP = "drop"
    CUT = "cut"
    HTTP_503 = "http_503"
    STALL = "stall"
    UNKNOWN_CLIENT = "unknown_client"
    DENY_HANDSHAKE = "deny_handshake"
    AUTH_INVALID = "auth_invalid"


FaultTarget = Literal["cometd", "oauth", "rest"]


class Fault(BaseModel):
    """One queued fault.

    Attributes:
        kind: what happens.
        count: how many matching requests it hits.
        target: which endpoint family it applies to.
        channel: for CometD, only requests carrying this meta channel (e.g.
            `/meta/connect`); any CometD request when None.
        seconds: stall length.
        reason: `ext.sfdc.failureReason` of a denied handshake.
        reconnect: advice sent with `unknown_client`.
    """

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    count: int = Field(default=1, ge=1)
    target: FaultTarget = "cometd"
    channel: str | None = None
    seconds: float = Field(default=0.0, ge=0.0, le=3600.0)
    reason: str = "401::Authentication invalid"
    reconnect: Literal["handshake", "none"] = "handshake"


class ChaosSettings(BaseModel):
    """Per-request probabilities of each fault in chaos mode."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    drop: float = Field(default=0.01, ge=0.0, le=1.0)
    cut: float = Field(default=0.01, ge=0.0, le=1.0)
    http_503: float = Field(default=0.02, ge=0.0, le=1.0)
    stall: float = Field(default=0.005, ge=0.0, le=1.0)
    stall_s: float = Field(default=5.0, ge=0.0, le=600.0)
    unknown_client: float = Field(default=0.005, ge=0.0, le=1.0)
    revoke_tokens: float = Field(default=0.002, ge=0.0, le=1.0)
    expire_clients: float = Field(default=0.002, ge=0.0, le=1.0)


ChaosAction = Literal["revoke_tokens", "expire_clients"]


@dataclass(slots=True)
class FaultInjector:
    """Queued faults and the optional chaos mode, with counts of what was injected."""

    queue: list[Fault] = field(default_factory=list)
    chaos: ChaosSettings | None = None
    injected: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def add(self, fault: Fault) -> None:
        self.queue.append(fault)

    def clear(self) -> None:
        """Remove queued faults and stop chaos."""
        self.queue.clear()
        self.chaos = None

    def start_chaos(self, settings: ChaosSettings) -> None:
        self.chaos = settings
        self._rng = random.Random(settings.seed)

    def _count(self, name: str) -> None:
        self.injected[name] = self.injected.get(name, 0) + 1

    def take(self, target: FaultTarget, channels: frozenset[str] = frozenset()) -> Fault | None:
        """The fault that hits this request, if any (queued faults first, then chaos)."""
        for index, fault in enumerate(self.queue):
            if fault.target != target:
                continue
            if fault.channel is not None and fault.channel not in channels:
                continue
            if fault.kind is FaultKind.DENY_HANDSHAKE and "/meta/handshake" not in channels:
                continue
            if fault.kind is FaultKind.AUTH_INVALID and "/meta/connect" not in channels:
                continue
            if fault.kind is FaultKind.UNKNOWN_CLIENT and not channels & {
                "/meta/connect",
                "/meta/subscribe",
            }:
                continue
            if fault.count <= 1:
                del self.queue[index]
            else:
                self.queue[index] = fault.model_copy(update={"count": fault.count - 1})
            self._count(fault.kind.value)
            return fault
        return self._chaos_fault(target, channels)

    def _chaos_fault(self, target: FaultTarget, channels: frozenset[str]) -> Fault | None:
        chaos = self.chaos
        if chaos is None or target != "cometd":
            return None
        roll = self._rng.random()
        for kind, rate in (
            (FaultKind.DROP, chaos.drop),
            (FaultKind.CUT, chaos.cut),
            (FaultKind.HTTP_503, chaos.http_503),
            (FaultKind.STALL, chaos.stall),
            (FaultKind.UNKNOWN_CLIENT, chaos.unknown_client),
        ):
            if roll < rate:
                if kind is FaultKind.UNKNOWN_CLIENT and "/meta/connect" not in channels:
                    return None
                self._count(kind.value)
                return Fault(kind=kind, seconds=chaos.stall_s)
            roll -= rate
        return None

    def chaos_action(self) -> ChaosAction | None:
        """A chaos side effect to apply before this request, if the dice say so."""
        chaos = self.chaos
        if chaos is None:
            return None
        roll = self._rng.random()
        if roll < chaos.revoke_tokens:
            self._count("revoke_tokens")
            return "revoke_tokens"
        if roll < chaos.revoke_tokens + chaos.expire_clients:
            self._count("expire_clients")
            return "expire_clients"
        return None
