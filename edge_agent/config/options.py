"""Options declared once, and the reader that checks TOML tables against them.

A section of the configuration is a frozen dataclass made with :func:`section`. Each of
its options is a field declared with :func:`option`: the kind of value (how it is read
and how the reference shows it), its default (no default: the key is required), an
optional check of the value, its TOML key when that differs from the field name, and
one line of documentation. :func:`read_section` builds a section from a :class:`Table`,
and ``python -m edge_agent.config.reference`` writes docs/CONFIG.md from the same
declarations.

A :class:`Table` records problems instead of raising, so that loading reports every
problem at once, each naming the file, the key path and the reason. A value that is
missing or does not parse stands in as its default (or the kind's placeholder when the
key is required); :meth:`Table.ok` tells whether a key was read cleanly. A problem never
shows a value that came from the environment (``${NAME}`` may hold a password): it names
the reference instead ("got the value of ${MQTT_PASSWORD} (not shown)").
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, dataclass_transform, overload

from edge_agent.config.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)
from edge_agent.errors import ConfigProblem

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
U = TypeVar("U")
L = TypeVar("L", bound=str)
S = TypeVar("S", bound="DataclassInstance")
C = TypeVar("C")
V_contra = TypeVar("V_contra", contravariant=True)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Values from the environment shorter than this are hidden only from the problem of
#: their own key: elsewhere "5" or "on" would be found by chance ("one of 3.1.1, 5").
HIDDEN_MIN_CHARS = 4
#: Values that switch a cap off, for the kinds made with :func:`off`.
OFF_VALUES = (0, "0", "off", "none", "unlimited")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A kind of value: how it is read from TOML and how the reference shows it."""

    #: Shown in the reference: "duration", "integer 1-500", "one of: full, normal".
    name: str
    #: Raises ValueError or TypeError with the reason shown next to the key.
    parse: Callable[[object], T]
    #: Stands in for a required value that is missing or does not parse.
    placeholder: T
    show: Callable[[T], str] = repr
    #: How the reference shows a default of None.
    none_text: str = "not set"

    def map(self, name: str, convert: Callable[[T], U], show: Callable[[U], str]) -> Kind[U]:
        """The same TOML value, converted after parsing (seconds to milliseconds, say)."""
        return Kind(
            name,
            lambda raw: convert(self.parse(raw)),
            convert(self.placeholder),
            show,
            self.none_text,
        )


def _quoted(value: str) -> str:
    return '"' + value + '"'


#: TOML's names for what is not a string (bool before int: a bool is an int).
_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (list, "an array"),
    (dict, "a table"),
)


def _string_or_empty(raw: object) -> str:
    if not isinstance(raw, str):
        # The type, not the value: a password written without quotes is still a password.
        kind = next((name for type_, name in _TOML_TYPES if isinstance(raw, type_)), "a date")
        raise TypeError(f"expected a string, got {kind}")
    return raw


def _string(raw: object) -> str:
    value = _string_or_empty(raw)
    if not value:
        raise ValueError("must not be empty")
    return value


def _boolean(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise TypeError(f"expected true or false, got {raw!r}")
    return raw


def _path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw:
        raise TypeError(f"expected a non-empty path string, got {raw!r}")
    return Path(raw)


def _string_list(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise TypeError(f"expected a list of strings, got {raw!r}")
    return tuple(raw)


STRING: Kind[str] = Kind("string", _string, "", _quoted)
#: A string that may be empty (a password).
ANY_STRING: Kind[str] = Kind("string", _string_or_empty, "", _quoted)
BOOLEAN: Kind[bool] = Kind("boolean", _boolean, False, lambda value: str(value).lower())
PATH: Kind[Path] = Kind("path", _path, Path(), lambda value: _quoted(str(value)))
STRING_LIST: Kind[tuple[str, ...]] = Kind(
    "list of strings", _string_list, (), lambda value: "[" + ", ".join(map(_quoted, value)) + "]"
)
SIZE: Kind[int] = Kind("size", parse_size, 0, lambda value: _quoted(format_size(value)))
DURATION: Kind[float] = Kind(
    "duration", parse_duration, 0.0, lambda value: _quoted(format_duration(value))
)
RATE: Kind[float] = Kind("rate", parse_rate, 0.0, lambda value: _quoted(f"{value:g}B/s"))
#: A duration, kept in milliseconds.
MILLISECONDS: Kind[int] = DURATION.map(
    "duration", lambda seconds: round(seconds * 1000), lambda ms: f'"{format_duration(ms / 1000)}"'
)


def integer(low: int, high: int) -> Kind[int]:
    """An integer from low to high; a string of digits counts (``"${PORT:-1883}"``)."""

    def parse(raw: object) -> int:
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError(f"expected an integer, got {raw!r}")
        if not low <= raw <= high:
            raise ValueError(f"must be between {low} and {high}, got {raw}")
        return raw

    return Kind(f"integer {low}-{high}", parse, low, str)


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` with the known name closest to a mistyped one, or ""."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def choice(*values: L) -> Kind[L]:
    """One of a few strings."""

    def parse(raw: object) -> L:
        for value in values:
            if raw == value:
                return value
        raise ValueError(
            f"must be one of {', '.join(values)}; got {raw!r}{did_you_mean(raw, values)}"
        )

    return Kind("one of: " + ", ".join(values), parse, values[0], _quoted)


def off(kind: Kind[T]) -> Kind[T | None]:
    """A cap that ``0``, ``"off"``, ``"none"`` or ``"unlimited"`` switches off (None)."""

    def parse(raw: object) -> T | None:
        if raw in OFF_VALUES:
            return None
        return kind.parse(raw)

    def show(value: T | None) -> str:
        return '"off"' if value is None else kind.show(value)

    return Kind(f'{kind.name} or "off"', parse, None, show, '"off"')


@dataclass(frozen=True)
class Check(Generic[V_contra]):
    """A test of one value: ``reason(value)`` is None when it passes; ``text`` says
    what it asks for (the reference shows it)."""

    text: str
    reason: Callable[[V_contra], str | None]


def within(low: float, high: float, text: str) -> Check[float]:
    """A number from low to high (both included)."""
    return Check(text, lambda value: None if low <= value <= high else text)


def at_least(low: float, text: str) -> Check[float]:
    return Check(text, lambda value: None if value >= low else text)


def matches(pattern: str, text: str) -> Check[str]:
    """A string the whole of which matches a regular expression."""
    compiled = re.compile(pattern)
    return Check(text, lambda value: None if compiled.fullmatch(value) else text)


class _Required:
    def __repr__(self) -> str:
        return "<required>"


#: The default of an option declared without one.
_NO_DEFAULT: Any = _Required()


@dataclass(frozen=True)
class Option(Generic[T]):
    """One declared option (kept in its dataclass field's metadata)."""

    kind: Kind[T]
    doc: str
    key: str = ""
    default: T = _NO_DEFAULT
    default_factory: Callable[[], T] | None = None
    #: The default as the reference states it, when it is not a fixed value.
    default_doc: str | None = None
    check: Check[T] | None = None

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT and self.default_factory is None

    def default_value(self) -> T:
        if self.default_factory is not None:
            return self.default_factory()
        return self.kind.placeholder if self.required else self.default

    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.required:
            return "required"
        value = self.default_value()
        return self.kind.none_text if value is None else self.kind.show(value)


@overload
def option(
    *,
    kind: Kind[T],
    doc: str,
    default: None,
    key: str = "",
    default_doc: str | None = None,
    check: Check[T] | None = None,
) -> T | None: ...
@overload
def option(
    *,
    kind: Kind[T],
    doc: str,
    default: T,
    key: str = "",
    default_doc: str | None = None,
    check: Check[T] | None = None,
) -> T: ...
@overload
def option(
    *,
    kind: Kind[T],
    doc: str,
    default_factory: Callable[[], T],
    key: str = "",
    default_doc: str | None = None,
    check: Check[T] | None = None,
) -> T: ...
@overload
def option(
    *,
    kind: Kind[T],
    doc: str,
    key: str = "",
    default_doc: str | None = None,
    check: Check[T] | None = None,
) -> T: ...
def option(
    *,
    kind: Kind[Any],
    doc: str,
    default: Any = _NO_DEFAULT,
    default_factory: Callable[[], Any] | None = None,
    key: str = "",
    default_doc: str | None = None,
    check: Check[Any] | None = None,
) -> Any:
    """Declare an option: a dataclass field of a :func:`section`."""
    declared = Option(kind, doc, key, default, default_factory, default_doc, check)
    metadata = {"option": declared}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    if default is _NO_DEFAULT:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass_transform(frozen_default=True, field_specifiers=(option, field))
def section(cls: type[C]) -> type[C]:
    """Make a frozen dataclass of a class whose options are declared with :func:`option`."""
    return dataclass(frozen=True)(cls)


def declared(cls: type[DataclassInstance]) -> list[tuple[str, Option[object]]]:
    """A section's options in declaration order: (field name, option with its TOML key)."""
    found = []
    for item in dataclasses.fields(cls):
        declaration = item.metadata.get("option")
        if isinstance(declaration, Option):
            found.append(
                (item.name, dataclasses.replace(declaration, key=declaration.key or item.name))
            )
    return found


class Table:
    """One TOML table being read; records problems instead of raising."""

    def __init__(
        self,
        file: str,
        path: str,
        table: object,
        problems: list[ConfigProblem],
        *,
        hidden: dict[str, str] | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.problems = problems
        #: Values taken from the environment, each with what a problem says instead;
        #: shared with the tables below this one (a later check may quote a value).
        self.hidden: dict[str, str] = {} if hidden is None else hidden
        self.failed: set[str] = set()
        #: Every key asked for, there or not: what an unknown key may be a typo of.
        self.asked: set[str] = set()
        if not isinstance(table, dict):
            self.problem("", f"expected a table, got {type(table).__name__}")
            table = {}
        self.raw: dict[str, object] = dict(table)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, reason: str) -> None:
        """Record a problem; no value taken from the environment shows in it (those of
        HIDDEN_MIN_CHARS or more: a check of another key may quote one)."""
        hidden = {
            value: text for value, text in self.hidden.items() if len(value) >= HIDDEN_MIN_CHARS
        }
        self.problems.append(
            ConfigProblem(self.file, self.key(name) if name else self.path, _hide(reason, hidden))
        )

    def ok(self, *names: str) -> bool:
        """Whether these keys were read without a problem (or left out and defaulted)."""
        return not self.failed.intersection(names)

    def names(self) -> list[str]:
        """The keys not read yet (the sinks of ``[sinks]``, say)."""
        return list(self.raw)

    def take(
        self, declaration: Option[T], default: T | None = None, *, has_default: bool = False
    ) -> T:
        """Read one option; ``default`` (with has_default) replaces the declared one."""
        name = declaration.key
        self.asked.add(name)
        fallback = default if has_default else declaration.default_value()
        required = declaration.required and not has_default
        if name not in self.raw:
            if required:
                self.problem(name, "is required")
                self.failed.add(name)
            return cast(T, fallback)
        raw = self.raw.pop(name)
        own: dict[str, str] = {}  # what this value took from the environment
        if isinstance(raw, str):
            reported = len(self.problems)
            raw, own = self._expand_env(name, raw)
            if len(self.problems) > reported:
                self.failed.add(name)
                return cast(T, fallback)
        try:
            value = declaration.kind.parse(raw)
        except (ValueError, TypeError) as err:
            why = _hide(str(err), own)
            if own and why == str(err):
                # The parser quoted the value in a form of its own (a number, trimmed):
                # say what was expected, not what it got.
                why = f"expected {declaration.kind.name}, got {own[cast(str, raw)]}"
            self.problem(name, why)
            self.failed.add(name)
            return cast(T, fallback)
        if declaration.check is not None and (reason := declaration.check.reason(value)):
            self.problem(name, _hide(reason, own))
        return value

    def _expand_env(self, name: str, raw: str) -> tuple[str, dict[str, str]]:
        """``raw`` with ``${NAME}`` and ``${NAME:-default}`` filled in, and what stands in
        for each value taken from the environment (and for the whole, if it has more)
        in a problem; those are hidden from every later problem, too."""
        taken: dict[str, str] = {}

        def substitute(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                if match.group(2) is None:
                    self.problem(name, f"environment variable {match.group(1)} is not set")
                    return ""
                return match.group(2)
            if value:
                taken.setdefault(value, f"the value of {match.group()} (not shown)")
            return value

        expanded = _ENV_REF.sub(substitute, raw)
        if taken:
            taken.setdefault(expanded, f"the value of {raw} (not shown)")
        for value, text in taken.items():
            self.hidden.setdefault(value, text)
        return expanded, taken

    def subtable(self, name: str) -> Table | None:
        self.asked.add(name)
        if name not in self.raw:
            return None
        return Table(
            self.file, self.key(name), self.raw.pop(name), self.problems, hidden=self.hidden
        )

    def table_list(self, name: str) -> list[Table]:
        self.asked.add(name)
        raw = self.raw.pop(name, [])
        if not isinstance(raw, list):
            self.problem(name, "expected an array of tables ([[...]])")
            return []
        return [
            Table(self.file, f"{self.key(name)}[{index}]", item, self.problems, hidden=self.hidden)
            for index, item in enumerate(raw)
        ]

    def skip(self, names: Iterable[str]) -> None:
        """Take these keys as known without reading them (the options of every type of
        sink, for a sink whose type is mistyped: one problem, not one per key)."""
        for name in names:
            self.asked.add(name)
            self.raw.pop(name, None)

    def finish(self) -> None:
        """Report every key nobody asked for: unknown keys are errors, each with the
        closest key that was asked for (a typo is the likely cause)."""
        for name in sorted(self.raw):
            self.problem(name, "unknown key" + did_you_mean(name, self.asked))


def _hide(reason: str, hidden: Mapping[str, str]) -> str:
    """``reason`` with each of the ``hidden`` values, quoted or standing alone (not inside
    a longer word or number), replaced by its stand-in; longest first, so that a whole
    value goes before the variables it was made of."""
    for value in sorted(hidden, key=len, reverse=True):
        stand_in = hidden[value]
        reason = reason.replace(repr(value), stand_in)
        alone = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")
        reason = stand_in.join(alone.split(reason))
    return reason


def read_section(
    cls: type[S],
    table: Table,
    *,
    given: Mapping[str, object] | None = None,
    defaults: Mapping[str, object] | None = None,
) -> S:
    """Build a section from a table: each declared option is read (``defaults`` replace
    declared defaults that depend on other sections), ``given`` fills the other fields
    (and options read already); fields with neither keep their dataclass default."""
    given = given or {}
    defaults = defaults or {}
    declarations = dict(declared(cls))
    unknown = (set(given) | set(defaults)) - {item.name for item in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    values: dict[str, object] = {}
    for item in dataclasses.fields(cls):
        if item.name in given:
            values[item.name] = given[item.name]
        elif item.name in declarations:
            values[item.name] = table.take(
                declarations[item.name],
                defaults.get(item.name),
                has_default=item.name in defaults,
            )
    return cast(Callable[..., S], cls)(**values)


def read_option(cls: type[DataclassInstance], name: str, table: Table) -> object:
    """Read one declared option of a section by itself (one that decides the others)."""
    return table.take(dict(declared(cls))[name])
