"""Error messages quote names in balanced pairs: `'Nope' is ...`, never `Nope' is ...`.

Two checks: every string literal of the emulator's source (read with `ast`, f-string
placeholders standing for their values), and the messages the control API actually sends,
which is where quotes got lost (`str()` of a `KeyError` wraps its message in quotes, and
stripping those took the message's own quote with them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import sfstream_emulator
from sfstream_emulator import Emulator
from tests.emulator.test_control import BAD_BODIES, Control

PACKAGE_DIR = Path(sfstream_emulator.__file__).parent
# An apostrophe inside a word (`wasn't`, `Salesforce's`) is not a quote.
_APOSTROPHE = re.compile(r"(?<=[A-Za-z])'(?=[A-Za-z])")
# Literals that are not messages: the characters a `strip` removes, and a release label,
# whose apostrophe abbreviates the year (`Winter '25`).
_STRIP_METHODS = frozenset({"strip", "lstrip", "rstrip"})
_NOT_MESSAGES = frozenset({("rest/describe.py", "release_label")})


def unbalanced_quotes(text: str) -> list[str]:
    """The quote characters of `text` that do not come in pairs."""
    bare = _APOSTROPHE.sub("", text)
    return [quote for quote in ("'", '"', "`") if bare.count(quote) % 2]


def test_the_check_itself() -> None:
    assert unbalanced_quotes("'Nope' is neither a platform event nor an object") == []
    assert unbalanced_quotes("Nope' is neither a platform event nor an object") == ["'"]
    assert unbalanced_quotes("The replayId for channel {/topic/X} wasn't found") == []
    assert unbalanced_quotes('the body must be {"allOrNone": bool}') == []
    assert unbalanced_quotes('no "field') == ['"']


def _rendered(node: ast.JoinedStr) -> str:
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        else:
            assert isinstance(value, ast.FormattedValue)
            # `{x!r}` of a string brings its own pair of quotes.
            parts.append("'X'" if value.conversion == ord("r") else "X")
    return "".join(parts)


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string literal of `path` that can be a message."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative = path.relative_to(PACKAGE_DIR).as_posix()
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skipped.add(id(node.value))  # docstrings
        elif isinstance(node, ast.JoinedStr | ast.FormattedValue):
            skipped.update(id(child) for child in ast.walk(node) if child is not node)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _STRIP_METHODS or name == "compile":
                skipped.update(id(child) for arg in node.args for child in ast.walk(arg))
        elif isinstance(node, ast.FunctionDef) and (relative, node.name) in _NOT_MESSAGES:
            skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            found.append((node.lineno, _rendered(node)))
    return found


def test_source_messages_have_balanced_quotes() -> None:
    problems = [
        f"{path.relative_to(PACKAGE_DIR)}:{line}: {text!r}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for line, text in _literals(path)
        if unbalanced_quotes(text)
    ]
    assert problems == []


def test_the_source_scan_sees_messages() -> None:
    texts = [text for path in PACKAGE_DIR.rglob("*.py") for _, text in _literals(path)]
    assert "'X' is neither a platform event nor an object with CDC" in texts
    assert any(text.startswith("sObject type 'X' is not supported.") for text in texts)


@pytest.fixture
def control(http: aiohttp.ClientSession, emu: Emulator) -> Control:
    return Control(http, emu)


async def _error_messages(control: Control) -> list[tuple[str, Any, str | None]]:
    """(request, body, message) of every control API error the tests know how to provoke.

    The message is None where the request was not refused with a JSON error.
    """
    requests: list[tuple[str, str, Any]] = [("POST", path, body) for path, body in BAD_BODIES]
    requests += [
        ("POST", "/events/generate", {"target": "Nope__e", "count": 1}),
        ("POST", "/events/generate", {"target": "Low_Ink__e", "count": 1, "payload_bytes": 9000}),
        ("POST", "/events/generate", {"target": "Account", "count": 1, "payload_bytes": 2**21}),
        ("POST", "/schema/Nope", {"remove": ["X__c"]}),
        ("POST", "/schema/Account", {"retype": {"Id": "string"}}),
        ("POST", "/schema/Account", {"retype": {"Name": "nope"}}),
        ("POST", "/records/001000000000000AAA/undelete", None),
        ("POST", "/records/nope/undelete", None),
        ("POST", "/events/publish", {"event": "Nope__e"}),
        ("POST", "/events/publish", {"event": "Order_Placed__e", "fields": {"Nope__c": 1}}),
        ("POST", "/events/publish", {"event": "Order_Placed__e", "fields": {"Amount__c": "x"}}),
        ("POST", "/records/Nope__c", {"fields": {}}),
        ("POST", "/records/Order_Placed__e", {"fields": {}}),
        ("POST", "/records/AccountChangeEvent", {"fields": {}}),
        ("POST", "/records/Account", {"fields": {"Nope__c": 1}}),
        ("PATCH", "/records/Account/001nope", {"fields": {}}),
        ("DELETE", "/records/Account/001000000000000AAA", None),
    ]
    requests.append(("GET", "/events?channel=/event/Nope__e", None))
    found = []
    for method, path, body in requests:
        kwargs = {} if body is None else {"json": body}
        async with control.http.request(method, f"{control.base}{path}", **kwargs) as response:
            refused = response.status in (400, 404) and response.content_type == "application/json"
            result = await response.json() if refused else None
        error = result.get("error") if isinstance(result, dict) else None
        found.append((f"{method} {path}", body, error))
    return found


async def test_control_errors_have_balanced_quotes(emu: Emulator, control: Control) -> None:
    messages = await _error_messages(control)
    problems = [
        (request, body, message)
        for request, body, message in messages
        if message is not None and unbalanced_quotes(message)
    ]
    assert problems == []
    assert [(request, body) for request, body, message in messages if message is None] == []


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/events/generate",
            {"target": "Nope", "count": 1},
            "'Nope' is neither a platform event nor an object with CDC",
        ),
        (
            "/schema/Nope",
            {"add": [{"name": "X__c", "type": "string"}]},
            "no object or platform event called 'Nope'",
        ),
        (
            "/schema/Account",
            {"remove": ["Nope__c"]},
            "Account has no removable field 'Nope__c'",
        ),
        (
            "/schema/Account",
            {"retype": {"Nope__c": "string"}},
            "Account has no retypable field 'Nope__c'",
        ),
        (
            "/schema/Account",
            {"add": [{"name": "Name", "type": "string"}]},
            "Account already has a field 'Name'",
        ),
    ],
)
async def test_messages_that_quote_names(
    control: Control, path: str, body: dict[str, Any], expected: str
) -> None:
    assert await control.bad("POST", path, body) == expected
