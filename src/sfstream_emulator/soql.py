"""A SOQL subset: enough for the queries streaming clients and PushTopics use.

Supported: `SELECT f1, f2 | COUNT() FROM Entity [WHERE cond] [ORDER BY f [ASC|DESC]]
[LIMIT n] [OFFSET n]` where `cond` combines `= != <> < <= > >= LIKE IN NOT IN INCLUDES
EXCLUDES` with `AND`, `OR`, `NOT` and parentheses; literals are quoted strings, numbers,
`true`, `false`, `null`, dates and datetimes. Keywords and field names are case-insensitive,
text comparisons too, as in Salesforce.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
      | (?P<date>\d{4}-\d{2}-\d{2})
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS: Final = frozenset(
    {
        "select",
        "from",
        "where",
        "and",
        "or",
        "not",
        "in",
        "like",
        "includes",
        "excludes",
        "order",
        "by",
        "asc",
        "desc",
        "limit",
        "offset",
        "nulls",
        "first",
        "last",
        "true",
        "false",
        "null",
    }
)


class SoqlError(ValueError):
    """A query Salesforce would reject; `error_code` is the REST errorCode."""

    def __init__(self, message: str, error_code: str = "MALFORMED_QUERY") -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    value: Any


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            bad = stripped[position:].strip().split(None, 1)[0]
            raise SoqlError(f"unexpected token: '{bad}'")
        position = match.end()
        kind = match.lastgroup or ""
        raw = match.group(kind)
        value: Any = raw
        if kind == "string":
            value = _unescape(raw[1:-1])
        elif kind == "number":
            value = float(raw) if "." in raw else int(raw)
        elif kind == "datetime":
            text_dt = raw.replace("Z", "+00:00")
            if re.search(r"[+-]\d{4}$", text_dt):
                text_dt = f"{text_dt[:-2]}:{text_dt[-2:]}"
            moment = datetime.fromisoformat(text_dt).astimezone(UTC)
            value = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind = "kw"
            value = raw.lower()
        tokens.append(_Tok(kind, raw, value))
    return tokens


_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
# Keywords that are also names in their own right (the standard `Order` object, a field called
# `Limit`): accepted wherever a name is expected.
_NAME_KEYWORDS: Final = frozenset({"order", "first", "last", "nulls", "offset", "limit"})


def _unescape(text: str, keep: str = "") -> str:
    r"""Resolve SOQL escapes (`\'`, `\n`, `\\`, ...); escapes of `keep` stay escaped."""

    def resolve(match: re.Match[str]) -> str:
        char = match.group(1)
        if char in keep:
            return match.group(0)
        return _ESCAPES.get(char, char)

    return re.sub(r"\\(.)", resolve, text, flags=re.DOTALL)


Predicate = Callable[[Callable[[str], Any]], bool]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. `where` takes a field getter and says whether a record matches."""

    entity: str
    fields: tuple[str, ...]
    count_only: bool = False
    where: Predicate | None = None
    where_fields: tuple[str, ...] = ()
    order_by: tuple[str, bool, bool] | None = None
    """(field, descending, nulls_last)"""
    limit: int | None = None
    offset: int = 0
    text: str = field(default="", compare=False)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether `record` (field name -> value, any case) satisfies the WHERE clause."""
        if self.where is None:
            return True
        return self.where(_getter(record))


def _getter(record: Mapping[str, Any]) -> Callable[[str], Any]:
    lowered = {k.lower(): v for k, v in record.items()}
    return lambda name: lowered.get(name.lower())


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.where_fields: list[str] = []

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise SoqlError("unexpected end of query")
        self.pos += 1
        return tok

    def accept_kw(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.value in words:
            self.pos += 1
            return True
        return False

    def expect_kw(self, word: str) -> None:
        tok = self.peek()
        if not self.accept_kw(word):
            found = tok.text if tok else "end of query"
            raise SoqlError(f"unexpected token: '{found}', expected {word.upper()}")

    def expect_punct(self, char: str) -> None:
        tok = self.next()
        if tok.kind != "punct" or tok.text != char:
            raise SoqlError(f"unexpected token: '{tok.text}', expected '{char}'")

    def ident(self) -> str:
        tok = self.next()
        if tok.kind != "word" and not (tok.kind == "kw" and tok.value in _NAME_KEYWORDS):
            raise SoqlError(f"unexpected token: '{tok.text}'")
        return tok.text

    def parse(self) -> Query:
        self.expect_kw("select")
        fields: list[str] = []
        count_only = False
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.lower() == "count":
            self.pos += 1
            self.expect_punct("(")
            self.expect_punct(")")
            count_only = True
        else:
            fields.append(self.ident())
            while (tok := self.peek()) is not None and tok.kind == "punct" and tok.text == ",":
                self.pos += 1
                fields.append(self.ident())
        self.expect_kw("from")
        entity = self.ident()
        where = self.expr() if self.accept_kw("where") else None
        order_by = None
        if self.accept_kw("order"):
            self.expect_kw("by")
            name = self.ident()
            descending = self.accept_kw("desc")
            if not descending:
                self.accept_kw("asc")
            nulls_last = descending
            if self.accept_kw("nulls"):
                nulls_last = self.accept_kw("last")
                if not nulls_last:
                    self.expect_kw("first")
            order_by = (name, descending, nulls_last)
        limit = self.integer() if self.accept_kw("limit") else None
        offset = self.integer() if self.accept_kw("offset") else 0
        if self.peek() is not None:
            raise SoqlError(f"unexpected token: '{self.next().text}'")
        return Query(
            entity=entity,
            fields=tuple(fields),
            count_only=count_only,
            where=where,
            where_fields=tuple(self.where_fields),
            order_by=order_by,
            limit=limit,
            offset=offset,
            text=self.text,
        )

    def integer(self) -> int:
        tok = self.next()
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise SoqlError(f"unexpected token: '{tok.text}'")
        return tok.value

    def expr(self) -> Predicate:
        left = self.conjunction()
        while self.accept_kw("or"):
            right = self.conjunction()
            left = _or(left, right)
        return left

    def conjunction(self) -> Predicate:
        left = self.negation()
        while self.accept_kw("and"):
            right = self.negation()
            left = _and(left, right)
        return left

    def negation(self) -> Predicate:
        if self.accept_kw("not"):
            inner = self.negation()
            return lambda get: not inner(get)
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == "(":
            self.pos += 1
            inner = self.expr()
            self.expect_punct(")")
            return inner
        return self.condition()

    def literal(self) -> Any:
        tok = self.next()
        if tok.kind in ("string", "number", "date", "datetime"):
            return tok.value
        if tok.kind == "kw" and tok.value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok.value]
        raise SoqlError(f"unexpected token: '{tok.text}'")

    def literal_list(self) -> list[Any]:
        self.expect_punct("(")
        values = [self.literal()]
        while (tok := self.peek()) is not None and tok.kind == "punct" and tok.text == ",":
            self.pos += 1
            values.append(self.literal())
        self.expect_punct(")")
        return values

    def condition(self) -> Predicate:
        name = self.ident()
        self.where_fields.append(name)
        if self.accept_kw("not"):
            self.expect_kw("in")
            values = self.literal_list()
            return lambda get: not _in(get(name), values)
        if self.accept_kw("in"):
            values = self.literal_list()
            return lambda get: _in(get(name), values)
        if self.accept_kw("like"):
            tok = self.next()
            if tok.kind != "string":
                raise SoqlError(f"unexpected token: '{tok.text}', LIKE needs a quoted string")
            # From the raw text: `\%` and `\_` are a literal percent sign and underscore.
            regex = _like(_unescape(tok.text[1:-1], keep="%_\\"))
            return lambda get: isinstance(v := get(name), str) and bool(regex.match(v))
        if self.accept_kw("includes", "excludes"):
            excludes = self.tokens[self.pos - 1].value == "excludes"
            wanted = [str(v).lower() for v in self.literal_list()]
            return lambda get: _includes(get(name), wanted) != excludes
        tok = self.next()
        if tok.kind != "op":
            raise SoqlError(f"unexpected token: '{tok.text}'")
        value = self.literal()
        return _compare(name, tok.text, value)


def _or(left: Predicate, right: Predicate) -> Predicate:
    return lambda get: left(get) or right(get)


def _and(left: Predicate, right: Predicate) -> Predicate:
    return lambda get: left(get) and right(get)


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _in(actual: Any, values: list[Any]) -> bool:
    return _norm(actual) in [_norm(v) for v in values]


def _includes(actual: Any, wanted: list[str]) -> bool:
    if not isinstance(actual, str):
        return False
    chosen = {part.lower() for part in actual.split(";")}
    return any(w in chosen for w in wanted)


def _like(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (`%` any run, `_` one character, `\\%`/`\\_` themselves) as a regex."""
    parts = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)


def _compare(name: str, op: str, value: Any) -> Predicate:
    expected = _norm(value)

    def check(get: Callable[[str], Any]) -> bool:
        actual = _norm(get(name))
        if op == "=":
            return bool(actual == expected)
        if op in ("!=", "<>"):
            return bool(actual != expected)
        if actual is None or expected is None:
            return False
        try:
            if op == "<":
                return bool(actual < expected)
            if op == "<=":
                return bool(actual <= expected)
            if op == ">":
                return bool(actual > expected)
            return bool(actual >= expected)
        except TypeError:
            return False

    return check


def parse(text: str) -> Query:
    """Parse a SOQL query.

    Raises:
        SoqlError: `MALFORMED_QUERY` with the token Salesforce would complain about.
    """
    if not text or not text.strip():
        raise SoqlError("A query string is required", "MALFORMED_QUERY")
    return _Parser(text).parse()


_Row = TypeVar("_Row", bound=Mapping[str, Any])


def run(query: Query, rows: Iterable[_Row]) -> list[_Row]:
    """Filter, order and page `rows` as `query` says."""
    selected = [row for row in rows if query.matches(row)]
    if query.order_by is not None:
        name, descending, nulls_last = query.order_by
        present = [r for r in selected if _getter(r)(name) is not None]
        absent = [r for r in selected if _getter(r)(name) is None]
        present.sort(key=lambda r: _norm(_getter(r)(name)), reverse=descending)
        selected = present + absent if nulls_last else absent + present
    selected = selected[query.offset :]
    if query.limit is not None:
        selected = selected[: query.limit]
    return selected
