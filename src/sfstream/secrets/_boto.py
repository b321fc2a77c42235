"""What the AWS backends share (Secrets Manager here, DynamoDB for the state and the schema
registry): their boto3 clients, and botocore's errors read as a code, a message and a status.

boto3 is untyped: it stays behind `Any` here. Blocking functions: callers run them in a
worker thread.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Final

_CLIENT_TIMEOUTS: Final = {"connect_timeout": 5, "read_timeout": 15}
_XML_FIELD: Final = r"<{0}>([^<]*)</{0}>"
_LOADER: Final[list[Any]] = []
_LOADER_LOCK: Final = threading.Lock()


def client(service: str, *, region: str | None, endpoint_url: str | None) -> Any:
    """A boto3 client of a session of its own: its credentials are looked up when it is made
    (the environment, the task or execution role, a profile), not taken from a session that
    another part of the process made earlier. Standard retry mode (3 attempts, with
    backoff), a 5 s connect and a 15 s read timeout. `endpoint_url` None leaves boto3's
    (which honours `AWS_ENDPOINT_URL_<SERVICE>` and `AWS_ENDPOINT_URL`).

    Raises:
        ImportError: boto3 is not installed.
        botocore errors: the client cannot be made (a malformed endpoint, no region).
    """
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    with _LOADER_LOCK:
        # The service models, read once per process (a new session would read them again:
        # about 0.25 s a client).
        if not _LOADER:
            _LOADER.append(core.get_component("data_loader"))
        core.register_component("data_loader", _LOADER[0])
    session = boto3.session.Session(botocore_session=core, region_name=region)
    return session.client(
        service,
        endpoint_url=endpoint_url,
        config=Config(retries={"mode": "standard"}, **_CLIENT_TIMEOUTS),
    )


def error_of(exc: BaseException | None) -> tuple[str | None, str, int | None]:
    """The service's error code, message and HTTP status of a botocore `ClientError`; the
    code is None for anything else (the network, the credentials lookup: the service out of
    reach).

    An answer that botocore could not read as the service's protocol (an XML error from a
    service that speaks JSON, as some endpoints and proxies send) gets the code and message
    its XML holds, rather than the HTTP status and the whole document.
    """
    answer = getattr(exc, "response", None)
    if not isinstance(answer, dict):
        return None, "", None
    error = answer.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", "") or "")
    status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code.isdigit() and "<Code>" in message:
        found = re.search(_XML_FIELD.format("Code"), message)
        said = re.search(_XML_FIELD.format("Message"), message)
        code = found.group(1) if found else code
        message = said.group(1) if said else ""
    return code, message, status if isinstance(status, int) else None
