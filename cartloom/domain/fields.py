"""The fields of the input topics, declared once: the validators read them, the schemas draw them.

A :class:`Field` names a field of a message, says whether it must be there and whether
``null`` stands for "absent", and has a kind (:class:`Text`, :class:`Integer`,
:class:`Timestamp`...). A kind does two things from the same numbers: ``check`` refuses a
decoded value with :class:`InvalidInput` naming the field and the rule, and ``json_schema``
states that rule in JSON Schema (draft 2020-12). The parsers of ``orders``,
``order.events`` and ``inventory`` read their fields through these declarations, and
:mod:`cartloom.domain.schemas` renders the same declarations as the published schemas,
so a limit changed here changes both (``tests/unit/test_contract_schemas.py`` holds them
to each other). The internal ``shopify.catalog`` is checked the same way
(:mod:`cartloom.domain.shopify.catalog`), without a published schema. Pure: no I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.payloads import check_key

#: The largest integer every JSON parser reads exactly (2**53 - 1, RFC 7493); every
#: integer of the contract stays within +/- this.
MAX_SAFE_INTEGER = 2**53 - 1

#: Every character ``str.isspace()`` is true for (a unit test compares the two). A text
#: field must hold at least one other character.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def _character_class(characters: str) -> str:
    """``characters`` as the members of a regex class, consecutive runs as ranges."""
    codes = sorted(ord(c) for c in characters)
    parts: list[str] = []
    start = previous = codes[0]
    for code in [*codes[1:], -1]:
        if code == previous + 1:
            previous = code
            continue
        parts.append(chr(start) if start == previous else f"{chr(start)}-{chr(previous)}")
        start = previous = code
    return "".join(parts)


#: Matches a string holding a character that is not whitespace. The characters stand in
#: the pattern literally (JSON escapes them), so every regex dialect reads it the same.
NON_BLANK_PATTERN = f"[^{_character_class(WHITESPACE)}]"

_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001 to 9999
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    f"(?:{_YEAR}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    "|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    f"|{_LEAP_YEAR}-02-29)"
)
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?"
_OFFSET = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
#: An RFC 3339 date-time with an offset, and only real dates (no 30 February, no leap
#: second): every string it matches, ``datetime.fromisoformat`` reads.
TIMESTAMP_PATTERN = f"^{_DATE}T{_TIME}{_OFFSET}$"
TIMESTAMP_MAX_LEN = 64


def _refuse(detail: str) -> InvalidInput:
    return InvalidInput(RejectReason.INVALID_SCHEMA, detail)


class Kind(ABC):
    """What a field holds: how a value is checked, and the same rule as JSON Schema."""

    @abstractmethod
    def check(self, value: Any, name: str) -> Any:
        """``value`` (not None) as the parser keeps it; raise :class:`InvalidInput` if refused."""

    @abstractmethod
    def expected(self, name: str) -> str:
        """The refusal detail for a value of the wrong type (or a required field missing)."""

    @abstractmethod
    def json_schema(self) -> dict[str, Any]:
        """The rule as a JSON Schema (draft 2020-12) fragment."""

    @abstractmethod
    def summary(self) -> str:
        """The rule in a few words, for the docs' field tables."""


@dataclass(frozen=True, slots=True)
class Text(Kind):
    """A string of at most ``max_len`` characters that is not empty or only whitespace.

    ``blank`` allows an empty or blank string too (text copied from elsewhere, such as a
    Shopify product type, which Shopify leaves empty when none was chosen).
    """

    max_len: int
    blank: bool = False

    def check(self, value: Any, name: str) -> str:
        """The string as given."""
        if not isinstance(value, str) or (not self.blank and (not value or value.isspace())):
            raise _refuse(self.expected(name))
        if len(value) > self.max_len:
            raise _refuse(f"{name} is longer than {self.max_len}")
        return value

    def expected(self, name: str) -> str:
        """A (non-empty) string."""
        return f"{name} must be a {'' if self.blank else 'non-empty '}string"

    def json_schema(self) -> dict[str, Any]:
        """A string with a non-whitespace character (unless blank), at most ``max_len`` long."""
        if self.blank:
            return {"type": "string", "maxLength": self.max_len}
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_len,
            "pattern": NON_BLANK_PATTERN,
        }

    def summary(self) -> str:
        """Text and its length."""
        if self.blank:
            return f"string, at most {self.max_len} characters"
        return f"string, 1 to {self.max_len} characters, not only whitespace"


@dataclass(frozen=True, slots=True)
class Timestamp(Kind):
    """An ISO-8601 date and time with a time zone, kept as given."""

    def check(self, value: Any, name: str) -> str:
        """The text as given, once ``datetime.fromisoformat`` read it with an offset."""
        text: str = _TIMESTAMP_TEXT.check(value, name)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise _refuse(f"{name} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise _refuse(f"{name} has no time zone")
        return text

    def expected(self, name: str) -> str:
        """A string."""
        return f"{name} must be a non-empty string"

    def json_schema(self) -> dict[str, Any]:
        """RFC 3339 (a subset of what ``check`` accepts: see TIMESTAMP_PATTERN)."""
        return {
            "type": "string",
            "format": "date-time",
            "maxLength": TIMESTAMP_MAX_LEN,
            "pattern": TIMESTAMP_PATTERN,
        }

    def summary(self) -> str:
        """RFC 3339."""
        return "RFC 3339 date-time with a time zone (`Z` or `+01:00`)"


_TIMESTAMP_TEXT = Text(TIMESTAMP_MAX_LEN)


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    """A whole number within ``minimum``..``maximum``, optionally not 0.

    JSON does not tell ``2`` from ``2.0`` (JSON Schema counts both as integers), so a
    number with no fraction is read as the integer it is; booleans are refused.
    """

    minimum: int = -MAX_SAFE_INTEGER
    maximum: int = MAX_SAFE_INTEGER
    nonzero: bool = False

    def check(self, value: Any, name: str) -> int:
        """The value as an ``int``."""
        if type(value) is not int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            elif not isinstance(value, int) or isinstance(value, bool):
                raise _refuse(self.expected(name))
        if value < self.minimum:
            raise _refuse(f"{name} must be >= {self.minimum}")
        if value > self.maximum:
            raise _refuse(f"{name} must be <= {self.maximum}")
        if self.nonzero and value == 0:
            raise _refuse(f"{name} must not be 0")
        result: int = value
        return result

    def expected(self, name: str) -> str:
        """An integer."""
        return f"{name} must be an integer"

    def json_schema(self) -> dict[str, Any]:
        """An integer with its bounds (and ``not 0``)."""
        schema: dict[str, Any] = {
            "type": "integer",
            "minimum": self.minimum,
            "maximum": self.maximum,
        }
        if self.nonzero:
            schema["not"] = {"const": 0}
        return schema

    def summary(self) -> str:
        """An integer and the bounds that are not the contract's default."""
        bounds = []
        if self.minimum != -MAX_SAFE_INTEGER:
            bounds.append(f">= {self.minimum}")
        if self.maximum != MAX_SAFE_INTEGER:
            bounds.append(f"<= {self.maximum}")
        if self.nonzero:
            bounds.append("not 0")
        return " ".join(["integer", ", ".join(bounds)]).strip()


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    """``true`` or ``false``."""

    def check(self, value: Any, name: str) -> bool:
        """The boolean."""
        if not isinstance(value, bool):
            raise _refuse(self.expected(name))
        return value

    def expected(self, name: str) -> str:
        """A boolean."""
        return f"{name} must be a boolean"

    def json_schema(self) -> dict[str, Any]:
        """A boolean."""
        return {"type": "boolean"}

    def summary(self) -> str:
        """A boolean."""
        return "boolean"


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def check(self, value: Any, name: str) -> str:
        """The string, when it is one of ``values``."""
        if not isinstance(value, str) or value not in self.values:
            raise _refuse(self.expected(name))
        return value

    def expected(self, name: str) -> str:
        """The allowed values."""
        return f"{name} must be one of {', '.join(sorted(self.values))}"

    def json_schema(self) -> dict[str, Any]:
        """An enum of the values."""
        return {"type": "string", "enum": sorted(self.values)}

    def summary(self) -> str:
        """The values."""
        return "one of " + ", ".join(f"`{value}`" for value in sorted(self.values))


@dataclass(frozen=True, slots=True)
class AnyObject(Kind):
    """A JSON object whose content CartLoom keeps without looking into it."""

    def check(self, value: Any, name: str) -> dict[str, Any]:
        """The object as given."""
        if not isinstance(value, dict):
            raise _refuse(self.expected(name))
        return value

    def expected(self, name: str) -> str:
        """An object."""
        return f"{name} must be an object"

    def json_schema(self) -> dict[str, Any]:
        """Any object."""
        return {"type": "object"}

    def summary(self) -> str:
        """An object."""
        return "object (any content)"


@dataclass(frozen=True, slots=True)
class Amount(Kind):
    """An amount of money: a decimal string (recommended) or a JSON number, kept as text."""

    def check(self, value: Any, name: str) -> str:
        """The amount as a string (a number as Python writes it)."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _refuse(self.expected(name))
        return str(value)

    def expected(self, name: str) -> str:
        """A decimal string."""
        return f"{name} must be a decimal string"

    def json_schema(self) -> dict[str, Any]:
        """A string or a number."""
        return {"type": ["string", "number"]}

    def summary(self) -> str:
        """A decimal string or number."""
        return 'decimal string (`"30.00"`) or number'


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: its name, kind, presence rules and what it means."""

    name: str
    kind: Kind
    description: str
    required: bool = False
    #: ``null`` reads as absent (otherwise a present ``null`` is refused).
    nullable: bool = False

    def read(self, payload: dict[str, Any]) -> Any:
        """The checked value, or None when absent; raise :class:`InvalidInput` if refused."""
        value = payload.get(self.name)
        if value is None:
            if self.required or (not self.nullable and self.name in payload):
                raise _refuse(self.kind.expected(self.name))
            return None
        return self.kind.check(value, self.name)

    def json_schema(self) -> dict[str, Any]:
        """The kind's schema with the description, and ``null`` allowed when nullable."""
        schema = {"description": self.description, **self.kind.json_schema()}
        if self.nullable:
            kinds = schema["type"]
            schema["type"] = [*(kinds if isinstance(kinds, list) else [kinds]), "null"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        return schema


@dataclass(frozen=True, slots=True)
class Record:
    """An object made of ``fields`` (a message, or an item of a list); others are ignored."""

    fields: tuple[Field, ...]

    def read(self, payload: dict[str, Any]) -> tuple[Any, ...]:
        """Each field's checked value, in the order of ``fields``."""
        return tuple(each.read(payload) for each in self.fields)

    def json_schema(self) -> dict[str, Any]:
        """An object with the fields' schemas and the required ones."""
        return {
            "type": "object",
            "required": [each.name for each in self.fields if each.required],
            "properties": {each.name: each.json_schema() for each in self.fields},
        }


@dataclass(frozen=True, slots=True)
class Items(Kind):
    """A list of ``min_items`` to ``max_items`` objects, each a :class:`Record`."""

    item: Record
    min_items: int = 0
    max_items: int | None = None

    def check(self, value: Any, name: str) -> list[tuple[Any, ...]]:
        """Each item's field values (see :meth:`Record.read`)."""
        if not isinstance(value, list) or len(value) < self.min_items:
            raise _refuse(self.expected(name))
        if self.max_items is not None and len(value) > self.max_items:
            raise _refuse(f"more than {self.max_items} {name}")
        read = self.item.read
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise _refuse(f"{name}[{index}] must be an object")
            try:
                items.append(read(item))
            except InvalidInput as exc:
                raise InvalidInput(exc.reason, f"{name}[{index}].{exc.detail}") from None
        return items

    def expected(self, name: str) -> str:
        """A list (non-empty when at least one item is needed)."""
        if self.min_items == 1:
            return f"{name} must be a non-empty list"
        if self.min_items > 1:
            return f"{name} must be a list of at least {self.min_items}"
        return f"{name} must be a list"

    def json_schema(self) -> dict[str, Any]:
        """An array of the item's objects, with its bounds."""
        schema: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema

    def summary(self) -> str:
        """A list of objects and its bounds."""
        fields = ", ".join(each.name for each in self.item.fields)
        if self.max_items is not None:
            return f"list of {self.min_items} to {self.max_items} objects {{{fields}}}"
        if self.min_items:
            return f"list of at least {self.min_items} objects {{{fields}}}"
        return f"list of objects {{{fields}}}"


class Rule(ABC):
    """A rule across fields of one message."""

    @abstractmethod
    def json_schema(self) -> dict[str, Any]:
        """The rule as a JSON Schema fragment (one member of the message's ``allOf``)."""

    @abstractmethod
    def summary(self) -> str:
        """The rule in a sentence, for the docs."""


@dataclass(frozen=True, slots=True)
class ExactlyOne(Rule):
    """Exactly one of ``names`` is present (``null`` counts as present, and is refused)."""

    names: tuple[str, ...]

    def check(self, payload: dict[str, Any]) -> str:
        """The name present; raise :class:`InvalidInput` for none or several."""
        present = [name for name in self.names if name in payload]
        if len(present) != 1:
            raise _refuse(f"exactly one of {' and '.join(self.names)} must be given")
        return present[0]

    def json_schema(self) -> dict[str, Any]:
        """``oneOf`` of each name required."""
        return {"oneOf": [{"required": [name]} for name in self.names]}

    def summary(self) -> str:
        """Which fields."""
        return "Exactly one of " + " and ".join(f"`{name}`" for name in self.names) + "."


@dataclass(frozen=True, slots=True)
class ItemsRequiredWhen(Rule):
    """The ``items`` field must hold an item or more when the ``when`` field is in ``values``."""

    items: str
    when: str
    values: tuple[str, ...]

    def check(self, chosen: str, items: Sequence[Any] | None) -> None:
        """Refuse a message whose ``when`` value needs items it does not have."""
        if chosen in self.values and not items:
            raise _refuse(f"{chosen} needs {self.items}")

    def json_schema(self) -> dict[str, Any]:
        """``if`` the choice is one of ``values`` ``then`` a non-empty ``items``."""
        return {
            "if": {
                "properties": {self.when: {"enum": sorted(self.values)}},
                "required": [self.when],
            },
            "then": {
                "required": [self.items],
                "properties": {self.items: {"type": "array", "minItems": 1}},
            },
        }

    def summary(self) -> str:
        """Which field, when."""
        values = " or ".join(f"`{value}`" for value in sorted(self.values))
        return f"`{self.items}` is required, with one item or more, when `{self.when}` is {values}."


@dataclass(frozen=True, slots=True)
class RequiredUnless(Rule):
    """The ``name`` field must be given (not ``null``) unless the boolean ``flag`` is true."""

    name: str
    flag: str

    def check(self, payload: dict[str, Any], flagged: bool) -> None:
        """Refuse a message without ``name`` whose ``flag`` (already read) is not true."""
        if not flagged and payload.get(self.name) is None:
            raise _refuse(f"{self.name} is required unless {self.flag} is true")

    def json_schema(self) -> dict[str, Any]:
        """``if`` the flag is true, nothing more; ``else`` the field is required."""
        return {
            "if": {"properties": {self.flag: {"const": True}}, "required": [self.flag]},
            "else": {"required": [self.name]},
        }

    def summary(self) -> str:
        """Which field, when."""
        return f"`{self.name}` is required unless `{self.flag}` is true."


@dataclass(frozen=True, slots=True)
class MessageContract:
    """The value of one input topic: its fields, the rules across them and its key.

    The Kafka key of every message must be the UTF-8 bytes of the ``key`` field's value:
    the key decides the partition, and the partition owns the entity.
    """

    topic: str
    title: str
    description: str
    key: Field
    record: Record
    rules: tuple[Rule, ...] = ()
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def fields(self) -> tuple[Field, ...]:
        """Every declared field, in declaration order."""
        return self.record.fields

    def check_key(self, key: str | None, entity_id: str) -> None:
        """Refuse a message whose Kafka key (when known) is not its entity id."""
        check_key(key, self.key.name, entity_id)

    def read(self, payload: dict[str, Any], key: str | None) -> tuple[Any, ...]:
        """Each field's checked value, in declaration order, once the key is the entity's id.

        The key field is read and held to the message key first, so a message on the wrong
        partition is refused as such whatever else is wrong with it.
        """
        entity_id = self.key.read(payload)
        check_key(key, self.key.name, entity_id)
        values = []
        for each in self.record.fields:  # a loop, not a generator: every order passes here
            values.append(entity_id if each is self.key else each.read(payload))
        return tuple(values)
