"""Secrets from AWS Secrets Manager (`pip install sfstream[aws]`).

One secret holds a JSON object of named values (`{"SF_REFRESH_TOKEN": "..."}`); it is fetched
once, in a worker thread (boto3 is blocking), and kept in memory. Credentials and region come
from the usual AWS chain (task role on Fargate, execution role on Lambda).

`put` changes one name inside that JSON object: it reads the secret's current version
(`GetSecretValue`, stage AWSCURRENT), sets the name, and writes the whole object back as a new
version (`PutSecretValue`, which moves AWSCURRENT to it and AWSPREVIOUS to the version read).
Every other name keeps its value and JSON type. Secrets Manager has no conditional write: a
change another writer makes to the same secret between this read and this write is lost, so
give each connector its own secret (or at least be the only writer of it). The role needs
`secretsmanager:PutSecretValue` on the secret (and `kms:GenerateDataKey` when the
secret uses a customer managed key); without it `put` reports the store read-only.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from pydantic import SecretStr

from sfstream.errors import SecretError, StorageUnavailableError
from sfstream.secrets.stores import SecretsReadOnlyError


class AwsSecretsManagerStore:
    """Looks names up in one JSON secret of AWS Secrets Manager, and updates them."""

    writable = True

    def __init__(self, secret_id: str, *, region: str | None = None, client: Any = None) -> None:
        self.secret_id = secret_id
        self.region = region
        self._client = client
        self._values: dict[str, str] | None = None
        self._lock = asyncio.Lock()
        self._write_lock = threading.Lock()

    def _api(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError as exc:
                raise SecretError(
                    "the aws secrets backend needs boto3: pip install 'sfstream[aws]'"
                ) from exc
            self._client = boto3.client("secretsmanager", region_name=self.region)
        return self._client

    def _refusal(self, exc: Exception, action: str) -> SecretError | StorageUnavailableError:
        code = _error_code(exc)
        if code is not None:
            return SecretError(f"AWS Secrets Manager refused {action}{self.secret_id!r}: {code}")
        return StorageUnavailableError(
            f"AWS Secrets Manager unreachable for {self.secret_id!r}: {type(exc).__name__}"
        )

    def _current(self) -> dict[str, Any]:
        """The secret's current JSON object, values as stored."""
        client = self._api()
        try:
            response = client.get_secret_value(SecretId=self.secret_id)
        except Exception as exc:
            raise self._refusal(exc, "") from exc
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise SecretError(f"secret {self.secret_id!r} has no SecretString")
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SecretError(f"secret {self.secret_id!r} is not a JSON object") from exc
        if not isinstance(data, dict):
            raise SecretError(f"secret {self.secret_id!r} is not a JSON object")
        return data

    def _fetch(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._current().items()}

    async def get(self, name: str) -> SecretStr:
        async with self._lock:
            if self._values is None:
                self._values = await asyncio.to_thread(self._fetch)
        value = self._values.get(name)
        if not value:
            raise SecretError(f"secret {name!r} is not in AWS secret {self.secret_id!r}")
        return SecretStr(value)

    async def put(self, name: str, value: SecretStr) -> None:
        async with self._lock:
            self._values = await asyncio.to_thread(self._put, name, value.get_secret_value())

    def _put(self, name: str, value: str) -> dict[str, str]:
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
                refusal = self._refusal(exc, "to update ")
                if _error_code(exc) == "AccessDeniedException":
                    raise SecretsReadOnlyError(
                        f"{refusal}; allow secretsmanager:PutSecretValue on it to keep "
                        f"{name!r} up to date"
                    ) from exc
                raise refusal from exc
        return {str(k): str(v) for k, v in data.items()}

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.secret_id!r}, region={self.region!r})"


def _error_code(exc: Exception) -> str | None:
    """The service's error code of a botocore `ClientError`; None for anything else (network,
    credentials lookup: the service out of reach)."""
    answer = getattr(exc, "response", None)
    if isinstance(answer, dict):
        return str(answer.get("Error", {}).get("Code", "Unknown"))
    return None
