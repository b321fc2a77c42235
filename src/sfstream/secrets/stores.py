"""Secrets stores: environment variables and a protected file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
from pydantic import SecretStr

from sfstream.errors import SecretError


class SecretsReadOnlyError(SecretError):
    """The store cannot keep a new value (environment variables, a read-only file or mount,
    an AWS role without `secretsmanager:PutSecretValue`)."""


@runtime_checkable
class SecretsStore(Protocol):
    """Looks up secrets by name, and stores new values where the backend allows it."""

    @property
    def writable(self) -> bool:
        """Whether `put` can store values at all (it may still fail, e.g. on permissions)."""
        ...

    async def get(self, name: str) -> SecretStr:
        """The secret called `name`.

        Raises:
            SecretError: it does not exist or cannot be read; the message names the secret,
                never its value.
        """
        ...

    async def put(self, name: str, value: SecretStr) -> None:
        """Store `value` as the secret called `name`, replacing it or adding it.

        Later `get` calls on this store, and later processes, see the new value.

        Raises:
            SecretsReadOnlyError: the store cannot be written.
            SecretError: the value could not be stored; the message names the secret, never
                its value.
        """
        ...


@runtime_checkable
class RereadableSecretsStore(SecretsStore, Protocol):
    """A store that keeps what it read in memory, and can read a name again on request."""

    async def reread(self, name: str) -> SecretStr:
        """The secret called `name` as the backend holds it now, not as first read (another
        process may have stored a new value meanwhile, such as a rotated refresh token).

        Raises:
            SecretError: as `get`.
        """
        ...


class EnvSecretsStore:
    """Secrets from environment variables: `get("SF_CLIENT_SECRET")` reads that variable.

    Read-only: a process cannot change the environment its successors start with.
    """

    writable = False

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    async def get(self, name: str) -> SecretStr:
        value = self._environ.get(name)
        if value is None or value == "":
            raise SecretError(f"secret {name!r} is not set: export it as an environment variable")
        return SecretStr(value)

    async def put(self, name: str, value: SecretStr) -> None:
        raise SecretsReadOnlyError(
            f"secret {name!r} comes from an environment variable, which sfstream cannot "
            "change for the next start (the env secrets backend is read-only)"
        )

    def __repr__(self) -> str:
        return "EnvSecretsStore()"


class FileSecretsStore:
    """Secrets from a file only its owner can read.

    The file holds a JSON object (`{"SF_REFRESH_TOKEN": "..."}`) or `NAME=value` lines
    (blank lines and `#` comments allowed). It is refused when group or others may read it,
    as ssh refuses a private key that others can read.

    `put` rewrites the file atomically: the new content goes to a temporary file in the same
    directory, is fsynced, and renamed over the old one (a symlink is followed and its target
    replaced), keeping the file's mode and owner. Everything else in the file stays as it was:
    other entries, comments, `export` prefixes, quotes and line endings of `NAME=value` files;
    key order and one-line or indented layout of JSON files. A file without its owner's write
    permission (mode 0400) is treated as read-only.
    """

    writable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._values: dict[str, str] | None = None
        self._write_lock = threading.Lock()

    def _read(self) -> tuple[str, os.stat_result]:
        try:
            info = self.path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                mode = stat.S_IMODE(info.st_mode)
                raise SecretError(
                    f"secrets file {self.path} is accessible by other users (mode {mode:04o}); "
                    f"run: chmod 600 {self.path}"
                )
            # Bytes decoded as they are: line endings stay as written (`put` keeps them).
            text = self.path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secrets file {self.path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            # Only the position: the bytes around it may be a secret.
            raise SecretError(
                f"secrets file {self.path} is not UTF-8 text (byte {exc.start})"
            ) from exc
        except ValueError as exc:  # a path with a NUL byte
            raise SecretError(f"cannot read secrets file {str(self.path)!r}: {exc}") from exc
        return text, info

    def _load(self) -> dict[str, str]:
        if self._values is not None:
            return self._values
        text, _ = self._read()
        self._values = _parse(text, self.path)
        return self._values

    async def get(self, name: str) -> SecretStr:
        values = self._load()
        if name not in values or values[name] == "":
            raise SecretError(f"secret {name!r} is not in {self.path}")
        return SecretStr(values[name])

    async def reread(self, name: str) -> SecretStr:
        """`name` from the file as it is now (another process may have rewritten it)."""
        self._values = None
        return await self.get(name)

    async def put(self, name: str, value: SecretStr) -> None:
        await asyncio.to_thread(self._put, name, value.get_secret_value())

    def _put(self, name: str, value: str) -> None:
        if not value:
            raise SecretError(f"secret {name!r}: an empty value cannot be stored")
        # One read-modify-write at a time, even when a caller stopped waiting for the last.
        with self._write_lock:
            # Read-modify-write of the file as it is now, not as it was first read.
            text, info = self._read()
            if not info.st_mode & stat.S_IWUSR:
                raise SecretsReadOnlyError(
                    f"secrets file {self.path} is read-only (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {self.path}"
                )
            values = _parse(text, self.path)
            if _is_json(text):
                updated = _json_with(text, name, value)
            else:
                updated = _lines_with(text, name, value, self.path)
            try:
                _replace_atomically(Path(os.path.realpath(self.path)), updated, info)
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise SecretsReadOnlyError(
                        f"secrets file {self.path} cannot be written: {exc.strerror}"
                    ) from exc
                raise SecretError(f"cannot write secrets file {self.path}: {exc.strerror}") from exc
            values[name] = value
            self._values = values

    def __repr__(self) -> str:
        return f"FileSecretsStore({str(self.path)!r})"


def _is_json(text: str) -> bool:
    return text.lstrip().startswith("{")


def _parse(text: str, path: Path) -> dict[str, str]:
    stripped = text.lstrip()
    if _is_json(text):
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
        values[_line_name(name)] = value
    return values


def _line_name(raw: str) -> str:
    return raw.strip().removeprefix("export ").strip()


# -- writing ---------------------------------------------------------------------------------

_QUOTES = "'\""
# Compiled on first use (by `re`, which keeps them): only writing a secret needs them.
_INDENT = r"\{[ \t]*(?:\r\n|\r|\n)([ \t]+)\S"
_SPACED_COLON = r"\"\s*:\s"


def _json_with(text: str, name: str, value: str) -> str:
    """`text` (a JSON object) with `name` set to `value`, in the file's layout."""
    data = orjson.loads(text.lstrip())
    data[name] = value
    leading = text[: len(text) - len(text.lstrip())]
    trailing = text[len(text.rstrip()) :]
    indent = re.search(_INDENT, text)
    if indent is not None:
        body = json.dumps(data, ensure_ascii=False, indent=indent.group(1))
    elif re.search(_SPACED_COLON, text):
        body = json.dumps(data, ensure_ascii=False)
    else:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return leading + body + trailing


def _lines_with(text: str, name: str, value: str, path: Path) -> str:
    """`text` (`NAME=value` lines) with every `name` line set to `value` (or one appended)."""
    if not name or name != name.strip() or "=" in name or name.startswith("#") or _multiline(name):
        raise SecretError(f"secret {name!r} cannot be named in a NAME=value file ({path})")
    if _multiline(value):
        raise SecretError(
            f"secret {name!r}: the new value spans lines and cannot be stored in {path} "
            "(NAME=value lines); use a JSON secrets file"
        )
    lines = text.splitlines(keepends=True)
    found = False
    for index, line in enumerate(lines):
        content = line.splitlines()[0]
        ending = line[len(content) :]
        stripped = content.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        head, _, rest = content.partition("=")
        if _line_name(head) != name:
            continue
        found = True
        core = rest.strip()
        lead = rest[: len(rest) - len(rest.lstrip())]
        trail = rest[len(rest.rstrip()) :]
        quote = core[0] if len(core) >= 2 and core[0] == core[-1] and core[0] in _QUOTES else None
        lines[index] = f"{head}={lead}{_encode(value, quote)}{trail}{ending}"
    if found:
        return "".join(lines)
    newline = _newline_of(text)
    if lines and lines[-1].splitlines() == [lines[-1]]:
        lines[-1] += newline  # the last line had no line ending
    lines.append(f"{name}={_encode(value, None)}{newline}")
    return "".join(lines)


def _multiline(value: str) -> bool:
    return value.splitlines() not in ([], [value])


def _encode(value: str, quote: str | None) -> str:
    """`value` as the right-hand side of a `NAME=value` line, read back unchanged by `_parse`."""
    if quote is not None:
        return f"{quote}{value}{quote}"
    unquoted_safe = value == value.strip() and not (
        len(value) >= 2 and value[0] == value[-1] and value[0] in _QUOTES
    )
    return value if unquoted_safe else f'"{value}"'


def _newline_of(text: str) -> str:
    for line in text.splitlines(keepends=True):
        ending = line[len(line.splitlines()[0]) :]
        if ending:
            return ending
    return "\n"


def _replace_atomically(target: Path, text: str, info: os.stat_result) -> None:
    """Write `text` to a temporary file beside `target`, fsync it, rename it over `target`."""
    directory = target.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
            if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):  # only root may give a file away
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself survives a crash once the directory is synced.
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
