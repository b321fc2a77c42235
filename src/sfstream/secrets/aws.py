"""Secrets from AWS Secrets Manager (`pip install sfstream[aws]`).

One secret holds a JSON object of named values (`{"SF_REFRESH_TOKEN": "..."}`); it is fetched
once, in a worker thread (boto3 is blocking), and kept in memory. Credentials and region come
from the usual AWS chain (task role on Fargate, execution role on Lambda).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from pydantic import SecretStr

from sfstream.errors import SecretError, StorageUnavailableError


class AwsSecretsManagerStore:
    """Looks names up in one JSON secret of AWS Secrets Manager."""

    def __init__(self, secret_id: str, *, region: str | None = None, client: Any = None) -> None:
        self.secret_id = secret_id
        self.region = region
        self._client = client
        self._values: dict[str, str] | None = None
        self._lock = asyncio.Lock()

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

    def _fetch(self) -> dict[str, str]:
        client = self._api()
        try:
            response = client.get_secret_value(SecretId=self.secret_id)
        except Exception as exc:
            # botocore's ClientError carries the service's answer; anything else (network,
            # credentials lookup) is the service being out of reach.
            answer = getattr(exc, "response", None)
            if isinstance(answer, dict):
                code = answer.get("Error", {}).get("Code", "Unknown")
                raise SecretError(
                    f"AWS Secrets Manager refused {self.secret_id!r}: {code}"
                ) from exc
            raise StorageUnavailableError(
                f"AWS Secrets Manager unreachable for {self.secret_id!r}: {type(exc).__name__}"
            ) from exc
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise SecretError(f"secret {self.secret_id!r} has no SecretString")
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SecretError(f"secret {self.secret_id!r} is not a JSON object") from exc
        if not isinstance(data, dict):
            raise SecretError(f"secret {self.secret_id!r} is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    async def get(self, name: str) -> SecretStr:
        async with self._lock:
            if self._values is None:
                self._values = await asyncio.to_thread(self._fetch)
        value = self._values.get(name)
        if not value:
            raise SecretError(f"secret {name!r} is not in AWS secret {self.secret_id!r}")
        return SecretStr(value)

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.secret_id!r}, region={self.region!r})"
