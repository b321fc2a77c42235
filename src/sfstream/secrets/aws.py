"""Secrets from AWS Secrets Manager (`pip install sfstream[aws]`).

One secret holds a JSON object of named values (`{"SF_REFRESH_TOKEN": "..."}`). It is read
with boto3 in a worker thread (boto3 blocks; the event loop never waits on it) and kept in
memory for `cache_ttl_s` seconds (`secrets.aws_cache_ttl_s`, 300 by default): a name asked
for later than that reads the secret again, and a name missing from the copy in memory is
looked up once more in the current version before it is reported missing. `reread` reads it
again at once, whatever the age of the copy: the connector does so when Salesforce refuses a
refresh token (`invalid_grant`) that another process may have rotated and stored meanwhile.

Credentials and region come from the usual AWS chain (task role on Fargate, execution role on
Lambda, `AWS_REGION`); `endpoint_url` (`secrets.aws_endpoint_url`) points the client at
another endpoint (a VPC interface endpoint, LocalStack, moto). Without it boto3 honours
`AWS_ENDPOINT_URL_SECRETS_MANAGER` and `AWS_ENDPOINT_URL`.

`put` changes one name inside that JSON object: it reads the secret's current version
(`GetSecretValue`, stage AWSCURRENT), sets the name, and writes the whole object back as a new
version (`PutSecretValue`, which moves AWSCURRENT to it and AWSPREVIOUS to the version read).
Every other name keeps its value and JSON type. Secrets Manager has no conditional write: a
change another writer makes to the same secret between this read and this write is lost, so
give each connector its own secret (or at least be the only writer of it). The role needs
`secretsmanager:PutSecretValue` on the secret (and `kms:GenerateDataKey` when the
secret uses a customer managed key); without it `put` reports the store read-only.

Errors say what the user can do: a secret that does not exist, an identity that may not read
it, a secret that is not a JSON object, a missing name are `SecretError` (terminal); the
service out of reach, throttling and its 5xx answers are `StorageUnavailableError`
(retryable).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Final

import orjson
from pydantic import SecretStr

from sfstream.errors import SecretError, StorageUnavailableError
from sfstream.secrets import _boto
from sfstream.secrets.stores import SecretsReadOnlyError

DEFAULT_CACHE_TTL_S: Final = 300.0
"""How long a secret read from Secrets Manager is served from memory."""

# The service's error codes that a later attempt may not get (throttling, its own failures).
_TRANSIENT_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredTokenException",
    }
)
_DENIED_CODES: Final = frozenset({"AccessDeniedException", "AccessDenied"})
_CREDENTIAL_CODES: Final = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
    }
)
_SHARED: Final[dict[tuple[str, str | None, str | None, float], AwsSecretsManagerStore]] = {}
_SHARED_LOCK: Final = threading.Lock()


class AwsSecretsManagerStore:
    """Looks names up in one JSON secret of AWS Secrets Manager, and updates them.

    Args:
        secret_id: the secret's name or ARN.
        region: its region; None takes the AWS chain's (`AWS_REGION`, the profile).
        endpoint_url: the Secrets Manager endpoint; None takes boto3's.
        cache_ttl_s: how long the secret read is served from memory (0: read every time).
    """

    writable = True

    def __init__(
        self,
        secret_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    ) -> None:
        self.secret_id = secret_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.cache_ttl_s = cache_ttl_s
        self.reads = 0
        """`GetSecretValue` calls made (for tests and diagnostics)."""
        self._client: Any = None
        self._values: dict[str, str] | None = None
        self._read_at = 0.0
        # Threading locks: one store may serve several event loops in turn (warm AWS Lambda
        # invocations), and a cancelled caller's worker thread runs on to the end.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    @classmethod
    def shared(
        cls,
        secret_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    ) -> AwsSecretsManagerStore:
        """The process's store for this secret: every configuration loaded in the process
        (each warm invocation of a Lambda function) shares its client and its copy."""
        key = (secret_id, region, endpoint_url, cache_ttl_s)
        with _SHARED_LOCK:
            store = _SHARED.get(key)
            if store is None:
                store = cls(
                    secret_id, region=region, endpoint_url=endpoint_url, cache_ttl_s=cache_ttl_s
                )
                _SHARED[key] = store
            return store

    async def get(self, name: str) -> SecretStr:
        value = await asyncio.to_thread(self._get, name, False)
        return SecretStr(value)

    async def reread(self, name: str) -> SecretStr:
        """`name` from the secret's current version, read now whatever the copy in memory.

        Raises:
            SecretError, StorageUnavailableError: as `get`.
        """
        value = await asyncio.to_thread(self._get, name, True)
        return SecretStr(value)

    async def put(self, name: str, value: SecretStr) -> None:
        await asyncio.to_thread(self._put, name, value.get_secret_value())

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.secret_id!r}, region={self.region!r})"

    # -- worker thread ---------------------------------------------------------------------

    def _get(self, name: str, fresh: bool) -> str:
        with self._lock:
            values = self._values
            stale = time.monotonic() - self._read_at >= self.cache_ttl_s
            if fresh or values is None or stale:
                values = self._refresh()
            elif not values.get(name):
                values = self._refresh()  # perhaps added since the copy was read
        value = values.get(name)
        if not value:
            raise SecretError(
                f"secret {name!r} is not in AWS secret {self.secret_id!r}: add it to the "
                f"secret's JSON object"
            )
        return value

    def _refresh(self) -> dict[str, str]:
        """Read the secret into memory (under `_lock`)."""
        values = _as_text(self._current())
        self._values = values
        self._read_at = time.monotonic()
        return values

    def _api(self) -> Any:
        if self._client is None:
            try:
                self._client = _boto.client(
                    "secretsmanager", region=self.region, endpoint_url=self.endpoint_url
                )
            except ImportError as exc:
                raise SecretError(
                    "the aws secrets backend needs boto3: pip install 'sfstream[aws]'"
                ) from exc
            except Exception as exc:
                raise self._translate(exc, "reach") from exc
        return self._client

    def _current(self) -> dict[str, Any]:
        """The secret's current JSON object, values as stored."""
        client = self._api()
        self.reads += 1
        try:
            response = client.get_secret_value(SecretId=self.secret_id)
        except Exception as exc:
            raise self._translate(exc, "read") from exc
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise SecretError(
                f"AWS secret {self.secret_id!r} holds binary data, not text: store a JSON "
                f'object of names and values ({{"SF_REFRESH_TOKEN": "..."}}) as its secret '
                f"string"
            )
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise SecretError(
                f"AWS secret {self.secret_id!r} is not a JSON object of names and values "
                f'(like {{"SF_REFRESH_TOKEN": "..."}}); store its values in that form'
            )
        return data

    def _put(self, name: str, value: str) -> None:
        if not value:
            raise SecretError(f"secret {name!r}: an empty value cannot be stored")
        # One read-modify-write at a time, even when a caller stopped waiting for the last.
        with self._write_lock:
            data = self._current()
            data[name] = value
            try:
                self._api().put_secret_value(
                    SecretId=self.secret_id, SecretString=orjson.dumps(data).decode()
                )
            except Exception as exc:
                refusal = self._translate(exc, "update")
                if _boto.error_of(exc)[0] in _DENIED_CODES:
                    raise SecretsReadOnlyError(
                        f"{refusal}; allow secretsmanager:PutSecretValue on it to keep "
                        f"{name!r} up to date"
                    ) from exc
                raise refusal from exc
            with self._lock:
                self._values = _as_text(data)
                self._read_at = time.monotonic()

    def _translate(self, exc: Exception, action: str) -> SecretError | StorageUnavailableError:
        """The sfstream error for what boto3 raised: the one place that maps them."""
        where = f"AWS secret {self.secret_id!r}" + (f" ({self.region})" if self.region else "")
        code, said, status = _boto.error_of(exc)
        if code is None:
            kind = type(exc).__name__
            if kind == "NoRegionError":
                return SecretError(
                    f"{where}: no AWS region is configured; set secrets.aws_region or AWS_REGION"
                )
            if kind in ("NoCredentialsError", "PartialCredentialsError"):
                return SecretError(
                    f"{where}: no AWS credentials were found (a task or execution role, "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
                )
            return StorageUnavailableError(
                f"AWS Secrets Manager unreachable for {self.secret_id!r} ({action}): {kind}: {exc}"
            )
        detail = f"{code}: {said}" if said else code
        if code in _TRANSIENT_CODES or (status is not None and status >= 500):
            return StorageUnavailableError(
                f"AWS Secrets Manager could not {action} {where} for now ({detail}); will retry"
            )
        if code == "ResourceNotFoundException":
            return SecretError(
                f"{where} does not exist ({detail}); create it, or check "
                f"secrets.aws_secret_id and secrets.aws_region"
            )
        if code in _DENIED_CODES:
            return SecretError(
                f"AWS Secrets Manager refused to {action} {where}: the AWS identity in use "
                f"may not ({detail})"
                + (
                    "; allow secretsmanager:GetSecretValue on it (and kms:Decrypt with a "
                    "customer managed key)"
                    if action == "read"
                    else ""
                )
            )
        if code in _CREDENTIAL_CODES:
            return SecretError(f"AWS refused the credentials in use to {action} {where} ({detail})")
        if code == "DecryptionFailure":
            return SecretError(
                f"{where} cannot be decrypted with its KMS key ({detail}); allow kms:Decrypt "
                f"on the key"
            )
        return SecretError(f"AWS Secrets Manager refused to {action} {where} ({detail})")


def _as_text(data: dict[str, Any]) -> dict[str, str]:
    """The values as text (a number stays readable, as its JSON text)."""
    return {
        str(key): value if isinstance(value, str) else orjson.dumps(value).decode()
        for key, value in data.items()
        if value is not None
    }
