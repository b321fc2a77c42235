"""Names a package exports but imports on first use (PEP 562).

A package's `__init__` runs before any of its modules: whatever it imports, every import of
`sfstream.x.y` pays. A package that exports heavy names (a client that needs aiohttp, a
backend that needs sqlite3) lists them here instead, and imports them under
`typing.TYPE_CHECKING` for type checkers::

    if typing.TYPE_CHECKING:
        from sfstream.state.sqlite import SqliteStateStore
    else:
        __getattr__, __dir__ = _lazy.exports(
            __name__, {"SqliteStateStore": "sfstream.state.sqlite"}
        )

`from package import Name`, `package.Name`, `dir(package)` and `from package import *` see the
names as before; the first use imports the module and keeps the value in the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, which exports `names` (name -> module)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the module hook's name
        return sorted({*namespace, *names})

    return __getattr__, __dir__
