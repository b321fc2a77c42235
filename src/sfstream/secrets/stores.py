"""Secrets stores: environment variables and a protected file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
from pydantic import SecretStr

from sfstream.errors import SecretError


@runtime_checkable
class SecretsStore(Protocol):
    """Looks up secrets by name."""

    async def get(self, name: str) -> SecretStr:
        """The secret called `name`.

        Raises:
            SecretError: it does not exist or cannot be read; the message names the secret,
                never its value.
        """
        ...


class EnvSecretsStore:
    """Secrets from environment variables: `get("SF_CLIENT_SECRET")` reads that variable."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    async def get(self, name: str) -> SecretStr:
        value = self._environ.get(name)
        if value is None or value == "":
            raise SecretError(f"secret {name!r} is not set: export it as an environment variable")
        return SecretStr(value)

    def __repr__(self) -> str:
        return "EnvSecretsStore()"


class FileSecretsStore:
    """Secrets from a file only its owner can read.

    The file holds a JSON object (`{"SF_REFRESH_TOKEN": "..."}`) or `NAME=value` lines
    (blank lines and `#` comments allowed). It is refused when group or others may read it,
    as ssh refuses a private key that others can read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._values: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._values is not None:
            return self._values
        try:
            info = self.path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                mode = stat.S_IMODE(info.st_mode)
                raise SecretError(
                    f"secrets file {self.path} is accessible by other users (mode {mode:04o}); "
                    f"run: chmod 600 {self.path}"
                )
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secrets file {self.path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            # Only the position: the bytes around it may be a secret.
            raise SecretError(
                f"secrets file {self.path} is not UTF-8 text (byte {exc.start})"
            ) from exc
        except ValueError as exc:  # a path with a NUL byte
            raise SecretError(f"cannot read secrets file {str(self.path)!r}: {exc}") from exc
        self._values = _parse(text, self.path)
        return self._values

    async def get(self, name: str) -> SecretStr:
        values = self._load()
        if name not in values or values[name] == "":
            raise SecretError(f"secret {name!r} is not in {self.path}")
        return SecretStr(values[name])

    def __repr__(self) -> str:
        return f"FileSecretsStore({str(self.path)!r})"


def _parse(text: str, path: Path) -> dict[str, str]:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise SecretError(f"secrets file {path} is not valid JSON (line {exc.lineno})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SecretError(f"secrets file {path} must map names to string values")
        return {str(k): v for k, v in data.items()}
    values: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise SecretError(f"secrets file {path}, line {number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip().removeprefix("export ").strip()] = value
    return values
