"""The `filter` of List RPCs: a safe subset of AIP-160 turned into a SQLAlchemy expression.

Only fields in the service's allow-list (`FilterField`s) can be named, every
literal is converted to the field's type and bound as a parameter: no text
from the request ever reaches SQL. Anything else is INVALID_ARGUMENT on
`filter`, naming the position, the field or the literal at fault.

Supported (everything else is rejected):

- comparisons `field OP literal` with OP one of `=` `!=` `<` `<=` `>` `>=`;
  bool and enum fields take only `=` and `!=`;
- `field:literal` (the has-operator) means equality on these scalar fields,
  and `field:*` means the field is set (IS NOT NULL);
- literals: strings in double or single quotes with backslash escapes
  (`\\"`, `\\'`, `\\\\`, `\\n`, `\\t`); numbers (`42`, `-1.5`, `2e3`; int fields
  take integers only); `true` / `false`; enum values by their bare (or
  quoted) name; timestamps as quoted RFC 3339 strings with an offset
  (`"2024-05-01T12:00:00Z"`), compared in UTC;
- `AND`, `OR`, `NOT` (upper case, as in AIP-160), `-` as a short NOT,
  parentheses, and juxtaposition (`a = 1 b = 2`) meaning AND.

Precedence follows AIP-160, which differs from SQL and most languages: OR
binds tighter than AND, so `a = 1 AND b = 2 OR c = 3` is
`a = 1 AND (b = 2 OR c = 3)`. NOT / `-` applies to the comparison or
parenthesized group right after it.

Fields a column comparison cannot express (a repeated field such as tags, a
map such as run metadata: EXISTS over another table) are `PredicateField`s:
the parser hands the operator and the literal as written (`FilterValue`) to
the field's `build`, which returns the SQL condition or refuses with a
ValueError that becomes INVALID_ARGUMENT. A `keyed` predicate field is a map:
`name.KEY` (KEY bare text, may contain dots) or `name."KEY"` (any characters,
AIP-160's quoted field); `name` alone reaches `build` with an empty key
(AIP-160's `map:"key"`).

Not supported: wildcards in strings (a `*` inside a string is a literal
character), functions, field traversal into messages, bare values (global
search), durations.

Comparisons are two-valued: on a nullable column, `x = v` is false (not NULL)
when x is NULL and `x != v` is true, so `NOT x = v` and `x != v` agree.

Bounds: at most 2,000 characters, 50 comparisons and nesting 16 deep.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, DateTime, and_, not_, or_

from services.kit.errors import InvalidArgument

FieldKind = Literal["string", "int", "float", "bool", "timestamp", "enum"]

MAX_FILTER_LENGTH = 2000
MAX_COMPARISONS = 50
MAX_DEPTH = 16
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EQUALITY_ONLY: frozenset[FieldKind] = frozenset({"bool", "enum"})
_COMPARATORS = ("<=", ">=", "!=", "=", "<", ">", ":")
_DIGITS = "0123456789"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class FilterField:
    """One filterable field: its column, its type and, for enums, name → stored value."""

    column: ColumnElement[Any]
    kind: FieldKind
    enum_values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "enum" and not self.enum_values:
            raise ValueError("an enum FilterField needs enum_values")


@dataclass(frozen=True)
class FilterValue:
    """A literal as written, for a PredicateField: a quoted string, a number, true/false, or `*`."""

    kind: Literal["string", "number", "bool", "present"]
    value: str | float | bool | None


# build(key, op, value): key is '' unless the field is keyed; op is = != < <= > >= or :.
PredicateBuild = Callable[[str, str, FilterValue], ColumnElement[bool]]


@dataclass(frozen=True)
class PredicateField:
    """A field whose restrictions the service builds itself (tags, metadata keys: EXISTS subqueries).

    `build` raises ValueError, saying what the field takes, for an operator or
    literal it does not support; the parser reports it on `filter`.
    """

    build: PredicateBuild
    # A map field: named as `name.KEY` or `name."KEY"`.
    keyed: bool = False


AnyField = FilterField | PredicateField


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "string", "number", "op", "lparen", "rparen", "minus", "star", "end"]
    text: str
    position: int  # 1-based column in the filter text, for error messages


def _fail(description: str) -> InvalidArgument:
    return InvalidArgument("filter", description)


def parse_filter(text: str, fields: Mapping[str, AnyField]) -> ColumnElement[bool] | None:
    """The WHERE expression for an AIP-160 `filter`, or None when the filter is empty."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _fail(f"is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return None
    parser = _Parser(_tokenize(text), fields)
    expression = parser.expression(depth=0)
    end = parser.peek()
    if end.kind != "end":
        raise _fail(f"unexpected {end.text!r} at position {end.position}")
    return expression


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        start = index + 1
        if char.isspace():
            index += 1
        elif char in "\"'":
            value, index = _read_string(text, index)
            tokens.append(_Token("string", value, start))
        elif char == "(":
            tokens.append(_Token("lparen", char, start))
            index += 1
        elif char == ")":
            tokens.append(_Token("rparen", char, start))
            index += 1
        elif char == "-":
            tokens.append(_Token("minus", char, start))
            index += 1
        elif char == "*":
            tokens.append(_Token("star", char, start))
            index += 1
        elif op := next((op for op in _COMPARATORS if text.startswith(op, index)), None):
            tokens.append(_Token("op", op, start))
            index += len(op)
        elif char in _DIGITS or (char == "." and index + 1 < len(text) and text[index + 1] in _DIGITS):
            end = index
            while end < len(text) and (text[end].isalnum() or text[end] == "." or _exponent_sign(text, end)):
                end += 1
            tokens.append(_Token("number", text[index:end], start))
            index = end
        elif char.isalpha() or char == "_":
            end = index
            while end < len(text) and (text[end].isalnum() or text[end] in "_."):
                end += 1
            tokens.append(_Token("word", text[index:end], start))
            index = end
        else:
            raise _fail(f"unexpected character {char!r} at position {start}")
    tokens.append(_Token("end", "end of filter", len(text) + 1))
    return tokens


def _exponent_sign(text: str, index: int) -> bool:
    # The sign in 1e-5 belongs to the number, not to a following negation.
    return text[index] in "+-" and index > 0 and text[index - 1] in "eE"


def _read_string(text: str, index: int) -> tuple[str, int]:
    quote, start = text[index], index + 1
    chars: list[str] = []
    index += 1
    while index < len(text):
        char = text[index]
        if char == quote:
            return "".join(chars), index + 1
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in _ESCAPES:
                raise _fail(f"unknown escape \\{escaped} at position {index + 1}")
            chars.append(_ESCAPES[escaped])
            index += 2
        else:
            chars.append(char)
            index += 1
    raise _fail(f"unterminated string starting at position {start}")


class _Parser:
    """Recursive descent over AIP-160's expression → sequence → factor → term → simple."""

    def __init__(self, tokens: list[_Token], fields: Mapping[str, AnyField]) -> None:
        self.tokens = tokens
        self.index = 0
        self.fields = fields
        self.comparisons = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def is_keyword(self, token: _Token, word: str) -> bool:
        return token.kind == "word" and token.text == word

    def expression(self, depth: int) -> ColumnElement[bool]:
        # expression: sequence {AND sequence}
        parts = [self.sequence(depth)]
        while self.is_keyword(self.peek(), "AND"):
            self.take()
            parts.append(self.sequence(depth))
        return parts[0] if len(parts) == 1 else and_(*parts)

    def sequence(self, depth: int) -> ColumnElement[bool]:
        # sequence: factor {factor}; juxtaposed factors are ANDed.
        parts = [self.factor(depth)]
        while self.peek().kind not in ("end", "rparen") and not self.is_keyword(self.peek(), "AND"):
            parts.append(self.factor(depth))
        return parts[0] if len(parts) == 1 else and_(*parts)

    def factor(self, depth: int) -> ColumnElement[bool]:
        # factor: term {OR term}
        parts = [self.term(depth)]
        while self.is_keyword(self.peek(), "OR"):
            self.take()
            parts.append(self.term(depth))
        return parts[0] if len(parts) == 1 else or_(*parts)

    def term(self, depth: int) -> ColumnElement[bool]:
        token = self.peek()
        if self.is_keyword(token, "NOT") or token.kind == "minus":
            self.take()
            return not_(self.simple(self.deeper(depth, token)))
        return self.simple(depth)

    def simple(self, depth: int) -> ColumnElement[bool]:
        token = self.take()
        if token.kind == "lparen":
            inner = self.expression(self.deeper(depth, token))
            closing = self.take()
            if closing.kind != "rparen":
                raise _fail(f"expected ')' at position {closing.position} to close '(' at {token.position}")
            return inner
        if token.kind != "word" or token.text in ("AND", "OR", "NOT"):
            raise _fail(f"expected a field name at position {token.position}, found {token.text!r}")
        return self.restriction(token)

    def deeper(self, depth: int, token: _Token) -> int:
        if depth + 1 > MAX_DEPTH:
            raise _fail(f"nests deeper than {MAX_DEPTH} levels at position {token.position}")
        return depth + 1

    def restriction(self, name: _Token) -> ColumnElement[bool]:
        spec, key, shown = self.resolve(name)
        op = self.take()
        if op.kind != "op":
            raise _fail(
                f"expected a comparison operator after {shown!r} at position {op.position}; "
                "bare values (global search) are not supported"
            )
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise _fail(f"has more than {MAX_COMPARISONS} comparisons")
        if isinstance(spec, PredicateField):
            return self.predicate(shown, spec, key, op)
        if op.text == ":" and self.peek().kind == "star":
            self.take()
            return spec.column.is_not(None)
        if op.text not in ("=", "!=", ":") and spec.kind in _EQUALITY_ONLY:
            raise _fail(f"{spec.kind} field {shown!r} supports only =, != and : (position {op.position})")
        value = self.literal(shown, spec)
        return _compare(spec.column, "=" if op.text == ":" else op.text, value)

    def resolve(self, name: _Token) -> tuple[AnyField, str, str]:
        """The field a name denotes, the map key of a keyed field ('' otherwise) and the name as shown."""
        spec = self.fields.get(name.text)
        if spec is not None:
            return spec, "", name.text
        prefix, _, key = name.text.partition(".")
        keyed = self.fields.get(prefix)
        if isinstance(keyed, PredicateField) and keyed.keyed:
            if key:
                return keyed, key, name.text
            quoted = self.peek()
            # name."KEY": the quoted key follows the dot directly.
            if quoted.kind == "string" and quoted.position == name.position + len(name.text):
                self.take()
                return keyed, quoted.text, f'{name.text}"{quoted.text}"'
            raise _fail(f"expected a key after {name.text!r} at position {quoted.position}")
        allowed = ", ".join(
            sorted(
                f"{known}.KEY" if isinstance(field_spec, PredicateField) and field_spec.keyed else known
                for known, field_spec in self.fields.items()
            )
        )
        raise _fail(
            f"unknown field {name.text!r} at position {name.position}; filterable fields: {allowed or 'none'}"
        )

    def predicate(self, shown: str, spec: PredicateField, key: str, op: _Token) -> ColumnElement[bool]:
        value = self.predicate_value(shown, op)
        try:
            return spec.build(key, op.text, value)
        except ValueError as error:
            raise _fail(f"field {shown!r} at position {op.position}: {error}") from None

    def predicate_value(self, shown: str, op: _Token) -> FilterValue:
        token = self.take_literal()
        if token.kind == "star" and op.text == ":":
            return FilterValue("present", None)
        if token.kind == "string":
            return FilterValue("string", token.text)
        if token.kind == "word" and token.text in ("true", "false"):
            return FilterValue("bool", token.text == "true")
        if token.kind == "number":
            try:
                return FilterValue("number", _float(token, None))
            except _LiteralError as error:
                raise _fail(
                    f"field {shown!r} expects {error} at position {token.position}, found {_show(token)}"
                ) from None
        raise _fail(
            f"field {shown!r} expects a quoted string, a number, true or false at position "
            f"{token.position}, found {_show(token)}"
        )

    def take_literal(self) -> _Token:
        """The next token, a `-` directly followed by a number joined into one negative number."""
        token = self.take()
        following = self.peek()
        if token.kind == "minus" and following.kind == "number" and following.position == token.position + 1:
            self.take()
            return _Token("number", "-" + following.text, token.position)
        return token

    def literal(self, field_name: str, spec: FilterField) -> Any:
        token = self.take_literal()
        where = f"at position {token.position}"
        convert = _CONVERTERS[spec.kind]
        try:
            return convert(token, spec)
        except _LiteralError as error:
            raise _fail(f"field {field_name!r} expects {error} {where}, found {_show(token)}") from None


class _LiteralError(Exception):
    """A literal does not fit the field type; its text says what was expected."""


def _show(token: _Token) -> str:
    if token.kind == "string":
        return f"the string {token.text!r}"
    if token.kind == "end":
        return "the end of the filter"
    return repr(token.text)


def _string(token: _Token, _spec: FilterField) -> str:
    if token.kind != "string":
        raise _LiteralError("a quoted string")
    return token.text


def _int(token: _Token, _spec: FilterField) -> int:
    text = token.text
    digits = text[1:] if text.startswith("-") else text
    if token.kind != "number" or not digits or any(char not in _DIGITS for char in digits):
        raise _LiteralError("an integer")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _LiteralError("a 64-bit integer")
    return value


def _float(token: _Token, _spec: FilterField | None) -> float:
    if token.kind != "number":
        raise _LiteralError("a number")
    try:
        value = float(token.text)
    except ValueError:
        raise _LiteralError("a number") from None
    if not math.isfinite(value):
        raise _LiteralError("a finite number")
    return value


def _bool(token: _Token, _spec: FilterField) -> bool:
    if token.kind == "word" and token.text in ("true", "false"):
        return token.text == "true"
    raise _LiteralError("true or false")


def _timestamp(token: _Token, spec: FilterField) -> dt.datetime:
    if token.kind != "string":
        raise _LiteralError('a quoted RFC 3339 timestamp such as "2024-05-01T12:00:00Z"')
    try:
        value = dt.datetime.fromisoformat(token.text)
    except ValueError:
        raise _LiteralError('an RFC 3339 timestamp such as "2024-05-01T12:00:00Z"') from None
    if value.tzinfo is None:
        raise _LiteralError("an RFC 3339 timestamp with an offset (Z or +hh:mm)")
    value = value.astimezone(dt.UTC)
    # Naive columns hold UTC by convention; SQLite keeps aware values as UTC text too.
    column_type = spec.column.type
    if isinstance(column_type, DateTime) and not column_type.timezone:
        return value.replace(tzinfo=None)
    return value


def _enum(token: _Token, spec: FilterField) -> Any:
    allowed = ", ".join(sorted(spec.enum_values))
    if token.kind not in ("word", "string") or token.text not in spec.enum_values:
        raise _LiteralError(f"one of {allowed}")
    return spec.enum_values[token.text]


_CONVERTERS: dict[FieldKind, Callable[[_Token, FilterField], Any]] = {
    "string": _string,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "timestamp": _timestamp,
    "enum": _enum,
}


def _compare(column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    comparisons: dict[str, Callable[[], ColumnElement[bool]]] = {
        "=": lambda: column == value,
        "!=": lambda: column != value,
        "<": lambda: column < value,
        "<=": lambda: column <= value,
        ">": lambda: column > value,
        ">=": lambda: column >= value,
    }
    comparison = comparisons[op]()
    if getattr(column, "nullable", True) is False:
        return comparison
    # Two-valued logic on nullable columns (see the module docstring).
    if op == "!=":
        return or_(column.is_(None), comparison)
    return and_(column.is_not(None), comparison)
