"""How a public view is declared: an allow-list that projects a value and states its schema.

A table value (an order, a SKU's stock, a product) carries what the stream processor needs
to stay exactly-once and on time: deferred events, keys of recent events, offsets,
deadlines. None of that is anyone else's business. A :class:`View` names the fields that
*are* (each a :class:`PublicField` with a :class:`Shape` and a description) and does two
things from that one declaration:

- :meth:`View.project` builds the answer from a stored value: the declared fields only,
  nested objects and list items projected the same way, so a field the view does not
  declare (today's bookkeeping, or one added tomorrow) never leaves;
- :meth:`View.json_schema` states the answer as JSON Schema (draft 2020-12, the dialect
  of OpenAPI 3.1), closed (``additionalProperties: false``), for the API document.

Every declared field is in every answer: a field the stored value lacks is ``null`` when
the field is nullable, or the field's ``absent`` value (an empty list, say). Pure.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cartloom.domain.fields import Kind


class Shape(ABC):
    """What a public field holds: how a stored value becomes the answer's, and its schema."""

    @abstractmethod
    def project(self, value: Any) -> Any:
        """The public form of ``value`` (not None)."""

    @abstractmethod
    def json_schema(self) -> dict[str, Any]:
        """The public form as a JSON Schema fragment."""

    @abstractmethod
    def summary(self) -> str:
        """The public form in a few words, for the docs' field tables."""


@dataclass(frozen=True, slots=True)
class Value(Shape):
    """A JSON scalar (string, number, boolean) answered as stored."""

    schema: dict[str, Any]
    words: str

    @classmethod
    def of(cls, kind: Kind) -> Value:
        """A scalar of an input contract's kind (:mod:`cartloom.domain.fields`): same rule."""
        return cls(kind.json_schema(), kind.summary())

    def project(self, value: Any) -> Any:
        """``value`` itself."""
        return value

    def json_schema(self) -> dict[str, Any]:
        """The declared schema."""
        return dict(self.schema)

    def summary(self) -> str:
        """The declared words."""
        return self.words


@dataclass(frozen=True, slots=True)
class Opaque(Shape):
    """A JSON object CartLoom keeps as a channel gave it (a customer), answered as stored."""

    def project(self, value: Any) -> Any:
        """A deep copy: the answer shares nothing with the table's value."""
        return copy.deepcopy(value)

    def json_schema(self) -> dict[str, Any]:
        """Any object."""
        return {"type": "object"}

    def summary(self) -> str:
        """An object."""
        return "object, as the channel sent it"


@dataclass(frozen=True, slots=True)
class CountsByName(Shape):
    """An object of names to whole numbers (units per location)."""

    def project(self, value: Any) -> Any:
        """A copy of the mapping."""
        return dict(value)

    def json_schema(self) -> dict[str, Any]:
        """An object whose every value is an integer."""
        return {"type": "object", "additionalProperties": {"type": "integer"}}

    def summary(self) -> str:
        """Name to integer."""
        return "object: name -> integer"


@dataclass(frozen=True, slots=True)
class ListOf(Shape):
    """A list, each item projected by ``item``."""

    item: Shape

    def project(self, value: Any) -> Any:
        """Each item's public form."""
        return [self.item.project(each) for each in value]

    def json_schema(self) -> dict[str, Any]:
        """An array of the item's schema."""
        return {"type": "array", "items": self.item.json_schema()}

    def summary(self) -> str:
        """A list of the item."""
        return f"list of {self.item.summary()}"


#: ``PublicField.absent`` when a field the stored value lacks is left out of the answer.
OMIT: Any = object()


@dataclass(frozen=True, slots=True)
class PublicField:
    """One field of a public view: its name, shape and what it means.

    ``nullable``: the field may be ``null`` (and is, when the stored value lacks it).
    ``absent``: what a non-nullable field answers when the stored value lacks it (a value
    written before the field existed); projected by ``shape``.
    """

    name: str
    shape: Shape
    description: str
    nullable: bool = False
    absent: Any = OMIT

    def json_schema(self) -> dict[str, Any]:
        """The shape's schema with the description, and ``null`` allowed when nullable."""
        schema = {"description": self.description, **self.shape.json_schema()}
        if self.nullable:
            kinds = schema["type"]
            schema["type"] = [*(kinds if isinstance(kinds, list) else [kinds]), "null"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        return schema


@dataclass(frozen=True, slots=True)
class View(Shape):
    """An object made of the declared ``fields`` only: the allow-list of one public view."""

    title: str
    description: str
    fields: tuple[PublicField, ...] = field(default_factory=tuple)

    @property
    def names(self) -> tuple[str, ...]:
        """The allowed field names, in answer order."""
        return tuple(each.name for each in self.fields)

    def project(self, value: Any) -> dict[str, Any]:
        """The public view of the stored ``value`` (a mapping): declared fields only."""
        if not isinstance(value, Mapping):
            raise TypeError(f"{self.title}: a stored value is an object, not {type(value)}")
        public: dict[str, Any] = {}
        for each in self.fields:
            if each.name in value:
                stored = value[each.name]
                public[each.name] = None if stored is None else each.shape.project(stored)
            elif each.nullable:
                public[each.name] = None
            elif each.absent is not OMIT:
                public[each.name] = each.shape.project(each.absent)
        return public

    def json_schema(self) -> dict[str, Any]:
        """A closed object: every declared field required, no other field allowed."""
        return {
            "title": self.title,
            "description": self.description,
            "type": "object",
            "required": list(self.names),
            "properties": {each.name: each.json_schema() for each in self.fields},
            "additionalProperties": False,
        }

    def summary(self) -> str:
        """An object of the declared fields."""
        return f"object {{{', '.join(self.names)}}}"
