"""Property tests: random server behaviour and failures never lose or reorder an event.

A small model of Salesforce's CometD server (event logs with replay ids, clients with
server-side cursors that move when a response is built, whether or not it arrives) answers
whatever the session sends. Hypothesis picks, for every request, what happens to it:
answered, lost after the server processed it, lost before, the client forgotten
(`403::Unknown client`), or the token revoked (`401::Authentication invalid`); and it
interleaves publications. Then the faults stop and the system runs until quiet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfstream.bayeux import (
    EARLIEST,
    Phase,
    Reauthenticate,
    Request,
    RequestKind,
    Session,
    SessionFailed,
    Step,
    parse,
)
from sfstream.errors import TransportError

CHANNELS = ("/data/AccountChangeEvent", "/event/Order_Placed__e", "/topic/Deals")
OUTCOMES = (
    "ok",
    "ok",
    "ok",
    "ok",
    "lost_after",
    "lost_before",
    "unknown_client",
    "revoked",
    "redeliver",
)


@dataclass
class ModelServer:
    rng: random.Random
    logs: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    next_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 1000))
    clients: dict[str, dict[str, int]] = field(default_factory=dict)
    counter: int = 0
    batch: int = 3

    def publish(self, channel: str) -> None:
        self.next_id[channel] += self.rng.randint(2, 9)
        self.logs[channel].append(self.next_id[channel])

    def forget_clients(self) -> None:
        self.clients.clear()

    def rewind(self, steps: int) -> None:
        """Move every cursor back: the server delivers some events a second time."""
        for cursors in self.clients.values():
            for name, position in cursors.items():
                cursors[name] = max(0, position - steps)

    def answer(self, request: Request) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for message in request.messages:
            out.extend(self._one(message))
        return out

    def _one(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        channel = message["channel"]
        base = {"channel": channel, "id": message["id"]}
        if channel == "/meta/handshake":
            self.counter += 1
            client_id = f"client{self.counter}"
            self.clients[client_id] = {}
            return [
                {
                    **base,
                    "clientId": client_id,
                    "successful": True,
                    "supportedConnectionTypes": ["long-polling"],
                    "version": "1.0",
                    "ext": {"replay": True, "payload.format": True},
                }
            ]
        client_id = message.get("clientId")
        cursors = self.clients.get(client_id) if isinstance(client_id, str) else None
        if cursors is None:
            reply = {**base, "successful": False, "error": "403::Unknown client"}
            if channel == "/meta/connect":
                reply["advice"] = {"reconnect": "handshake", "interval": 0}
            if "subscription" in message:
                reply["subscription"] = message["subscription"]
            return [reply]
        if channel == "/meta/subscribe":
            name = message["subscription"]
            replay = message["ext"]["replay"][name]
            assert isinstance(replay, int)
            log = self.logs[name]
            if replay == -2:
                cursors[name] = 0
            elif replay == -1:
                cursors[name] = len(log)
            else:
                assert replay in log, f"replayId {replay} was never issued on {name}"
                cursors[name] = log.index(replay) + 1
            return [{**base, "clientId": client_id, "subscription": name, "successful": True}]
        if channel == "/meta/connect":
            events = []
            for name, position in cursors.items():
                log = self.logs[name]
                taken = log[position : position + self.batch]
                cursors[name] = position + len(taken)
                events += [
                    {"channel": name, "data": {"event": {"replayId": r}, "payload": {}}}
                    for r in taken
                ]
            return [*events, {**base, "clientId": client_id, "successful": True}]
        if channel == "/meta/unsubscribe":
            cursors.pop(message["subscription"], None)
        return [{**base, "clientId": client_id, "successful": True}]


class Harness:
    def __init__(self, seed: int) -> None:
        self.server = ModelServer(random.Random(seed))
        self.session = Session(rng=random.Random(seed), backoff_base_s=0.5, backoff_cap_s=4.0)
        self.now = 0.0
        self.outstanding: list[Request] = []
        self.delivered: dict[str, list[int]] = {c: [] for c in CHANNELS}
        self.failed = False

    def pump(self) -> None:
        self.outstanding.extend(self.session.poll(self.now))

    def check_resubscribe(self, requests: list[Request]) -> None:
        """Every subscribe resumes from the last replayId delivered on its channel."""
        for request in requests:
            if request.kind is not RequestKind.SUBSCRIBE:
                continue
            for message in request.messages:
                channel = message["subscription"]
                delivered = self.delivered[channel]
                expected = delivered[-1] if delivered else EARLIEST
                assert message["ext"]["replay"] == {channel: expected}

    def apply(self, step: Step) -> None:
        for event in step.events:
            assert event.replay_id is not None
            self.delivered[event.channel].append(event.replay_id)
        for notice in step.notices:
            if isinstance(notice, Reauthenticate):
                self.session.authenticated(self.now)
            if isinstance(notice, SessionFailed):
                self.failed = True

    def handle(self, index: int, outcome: str) -> None:
        if not self.outstanding:
            deadline = self.session.next_deadline(self.now)
            if deadline is not None:
                self.now = max(self.now, deadline)
            self.pump()
            if not self.outstanding:
                return
        request = self.outstanding.pop(index % len(self.outstanding))
        if outcome == "lost_before":
            self.apply(self.session.fail(request, self.now, TransportError("reset")))
        elif outcome == "lost_after":
            self.server.answer(request)
            self.apply(self.session.fail(request, self.now, TransportError("cut")))
        elif outcome == "unknown_client":
            self.server.forget_clients()
            self._answer(request)
        elif outcome == "redeliver":
            self.server.rewind(2)
            self._answer(request)
        elif outcome == "revoked" and request.kind is RequestKind.CONNECT:
            messages = [
                {
                    "channel": "/meta/connect",
                    "id": request.messages[0]["id"],
                    "successful": False,
                    "error": "401::Authentication invalid",
                    "advice": {"reconnect": "none", "interval": 0},
                }
            ]
            replies, events = parse(messages)
            self.apply(self.session.receive(request, self.now, replies, events))
        else:
            self._answer(request)
        before = len(self.outstanding)
        self.pump()
        self.check_resubscribe(self.outstanding[before:])

    def _answer(self, request: Request) -> None:
        replies, events = parse(self.server.answer(request))
        self.apply(self.session.receive(request, self.now, replies, events))

    def settle(self) -> None:
        """No more faults: run until every published event has been delivered."""
        for _ in range(10_000):
            if self.failed or self.caught_up():
                return
            self.handle(0, "ok")
        raise AssertionError("the session did not settle")

    def caught_up(self) -> bool:
        return all(self.delivered[c] == self.server.logs[c] for c in CHANNELS) and (
            self.session.phase is Phase.CONNECTED
        )


action = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
    st.tuples(st.just("request"), st.tuples(st.integers(0, 5), st.sampled_from(OUTCOMES))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16), actions=st.lists(action, max_size=120), backlog=st.integers(0, 8)
)
def test_no_event_is_lost_duplicated_or_reordered(
    seed: int, actions: list[tuple[str, Any]], backlog: int
) -> None:
    harness = Harness(seed)
    for channel in CHANNELS:
        for _ in range(backlog):
            harness.server.publish(channel)
        harness.session.subscribe(channel, EARLIEST)
    harness.pump()
    for kind, argument in actions:
        if kind == "publish":
            harness.server.publish(argument)
        else:
            index, outcome = argument
            harness.handle(index, outcome)
        for channel, ids in harness.delivered.items():
            assert ids == sorted(set(ids)), f"{channel} went backwards or repeated: {ids}"
    harness.settle()
    assert not harness.failed
    for channel in CHANNELS:
        assert harness.delivered[channel] == harness.server.logs[channel]


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**16), failures=st.integers(1, 12))
def test_after_any_handshake_every_subscription_resumes_from_its_latest_replay_id(
    seed: int, failures: int
) -> None:
    harness = Harness(seed)
    for channel in CHANNELS:
        harness.server.publish(channel)
        harness.session.subscribe(channel, EARLIEST)
    harness.pump()
    rng = random.Random(seed)
    for _ in range(failures):
        for _ in range(rng.randint(1, 6)):
            harness.server.publish(rng.choice(CHANNELS))
            harness.handle(rng.randint(0, 3), "ok")
        harness.handle(rng.randint(0, 3), rng.choice(("unknown_client", "lost_after")))
    harness.settle()
    for channel in CHANNELS:
        assert harness.delivered[channel] == harness.server.logs[channel]
