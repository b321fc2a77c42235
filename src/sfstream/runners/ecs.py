"""The ECS task a service runs in (AWS Fargate), from the task metadata endpoint v4.

ECS sets `ECS_CONTAINER_METADATA_URI_V4` in every container of a task; `identify` reads
`${ECS_CONTAINER_METADATA_URI_V4}/task` once, at start, and returns the fields every log line
of the run then carries (bound with `structlog.contextvars`, like the run id):

| log field | from the task metadata |
|---|---|
| `ecs_task_arn` | `TaskARN` |
| `ecs_cluster` | `Cluster` (an ARN on Fargate, the cluster's name on some EC2 agents) |
| `ecs_family` | `Family` (the task definition's family) |

The task's resource attributes (OpenTelemetry's semantic conventions: `cloud.provider`,
`cloud.platform`, `aws.ecs.task.arn`, `aws.ecs.cluster.arn`, `aws.ecs.task.family`, ...)
are handed to `sfstream.observability.tracing`, whose traces carry them when tracing is on.

The lookup is bounded (`TIMEOUT_S`) and never fatal: outside ECS it does nothing, and an
endpoint that fails or answers something else than a task document is logged as a warning
(`ecs_metadata_unavailable`) and the run goes on without the fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from sfstream.observability.tracing import set_platform_attributes

log = structlog.get_logger("sfstream.ecs")

METADATA_VARIABLE: Final = "ECS_CONTAINER_METADATA_URI_V4"
TIMEOUT_S: Final = 2.0
"""How long the lookup may take, connecting included (the endpoint is local to the task)."""


class TaskMetadataError(Exception):
    """The task metadata endpoint failed, or answered something else than a task."""


@dataclass(frozen=True, slots=True)
class EcsTask:
    """The identity of an ECS task, as its metadata endpoint describes it."""

    arn: str
    cluster: str
    family: str
    revision: str | None = None
    availability_zone: str | None = None
    launch_type: str | None = None

    @classmethod
    def from_document(cls, document: object) -> EcsTask:
        """The task of a v4 task metadata document (`TaskARN`, `Cluster`, `Family`, ...)."""
        if not isinstance(document, dict):
            raise TaskMetadataError(f"the task metadata is not an object ({_kind(document)})")
        missing = [
            key
            for key in ("TaskARN", "Cluster", "Family")
            if not isinstance(document.get(key), str) or not document[key]
        ]
        if missing:
            raise TaskMetadataError(f"the task metadata has no {', '.join(missing)}")
        return cls(
            arn=document["TaskARN"],
            cluster=document["Cluster"],
            family=document["Family"],
            revision=_text(document.get("Revision")),
            availability_zone=_text(document.get("AvailabilityZone")),
            launch_type=_text(document.get("LaunchType")),
        )

    def log_fields(self) -> dict[str, str]:
        """The fields every log line of the run carries."""
        return {"ecs_task_arn": self.arn, "ecs_cluster": self.cluster, "ecs_family": self.family}

    def resource_attributes(self) -> dict[str, str]:
        """OpenTelemetry resource attributes (semantic conventions for AWS ECS)."""
        attributes = {
            "cloud.provider": "aws",
            "cloud.platform": "aws_ecs",
            "aws.ecs.task.arn": self.arn,
            "aws.ecs.task.family": self.family,
        }
        cluster_arn = self.cluster_arn()
        if cluster_arn is not None:
            attributes["aws.ecs.cluster.arn"] = cluster_arn
        if self.revision is not None:
            attributes["aws.ecs.task.revision"] = self.revision
        if self.launch_type is not None:
            attributes["aws.ecs.launchtype"] = self.launch_type.lower()
        if self.availability_zone is not None:
            attributes["cloud.availability_zone"] = self.availability_zone
        parts = self.arn.split(":")
        if len(parts) >= 6 and parts[0] == "arn":
            if parts[3]:
                attributes["cloud.region"] = parts[3]
            if parts[4]:
                attributes["cloud.account.id"] = parts[4]
        return attributes

    def cluster_arn(self) -> str | None:
        """The cluster's ARN: `Cluster` itself, or built from the task's ARN when `Cluster`
        is a bare name; None when neither is an ARN."""
        if self.cluster.startswith("arn:"):
            return self.cluster
        parts = self.arn.split(":")
        if len(parts) < 6 or parts[0] != "arn":
            return None
        return ":".join([*parts[:5], f"cluster/{self.cluster}"])


async def fetch_task(base_url: str, *, timeout_s: float = TIMEOUT_S) -> EcsTask:
    """GET `{base_url}/task` and read the task from it.

    Raises:
        TaskMetadataError: the endpoint cannot be reached within `timeout_s`, answers
            another status than 200, or with something else than a task document.
    """
    import aiohttp

    url = base_url.rstrip("/") + "/task"
    # The endpoint is link-local to the task: no proxy of the environment applies to it.
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
            http.get(url) as response,
        ):
            if response.status != 200:
                raise TaskMetadataError(f"{url} answered HTTP {response.status}")
            document: Any = await response.json(content_type=None)
    except TimeoutError:
        raise TaskMetadataError(f"{url} did not answer within {timeout_s:g} s") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise TaskMetadataError(f"{url}: {exc or type(exc).__name__}") from None
    return EcsTask.from_document(document)


async def identify(
    environ: Mapping[str, str] = os.environ, *, timeout_s: float = TIMEOUT_S
) -> dict[str, str]:
    """On ECS (`ECS_CONTAINER_METADATA_URI_V4` set): the task's log fields, its resource
    attributes handed to the traces. Elsewhere, or when the lookup fails (a warning), {}."""
    base_url = environ.get(METADATA_VARIABLE, "").strip()
    if not base_url:
        return {}
    try:
        task = await fetch_task(base_url, timeout_s=timeout_s)
    except TaskMetadataError as exc:
        log.warning(
            "ecs_metadata_unavailable",
            error=str(exc),
            note="log lines and traces go without the task's ARN, cluster and family",
        )
        return {}
    set_platform_attributes(task.resource_attributes())
    fields = task.log_fields()
    log.info("ecs_task", **fields, revision=task.revision, zone=task.availability_zone)
    return fields


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
