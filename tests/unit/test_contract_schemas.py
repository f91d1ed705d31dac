"""The published JSON Schemas and the validators: generated from one declaration, kept equal.

Three things are held here. The committed files in ``docs/schemas/`` are what the code
generates. Every message a schema accepts (drawn by hypothesis-jsonschema from the schema
itself, then sent through JSON as a producer would) is accepted by CartLoom's validator.
And a valid message broken in one way that the declarations name (a required field
missing, a wrong type, a limit exceeded, a rule across fields broken) is refused by both.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.fields import (
    MAX_SAFE_INTEGER,
    TIMESTAMP_MAX_LEN,
    TIMESTAMP_PATTERN,
    WHITESPACE,
    Amount,
    AnyObject,
    Boolean,
    Choice,
    ExactlyOne,
    Field,
    Integer,
    Items,
    ItemsRequiredWhen,
    MessageContract,
    Text,
    Timestamp,
)
from cartloom.domain.payloads import decode_json_object
from cartloom.domain.schemas import INPUT_CONTRACTS, PARSERS, json_schema
from cartloom.web.schema_files import (
    CHECKOUT_DIR,
    CHECKOUT_DOC,
    DOC_MARKER,
    file_name,
    stale_schemas,
)

TOPICS = sorted(INPUT_CONTRACTS)
SCHEMAS = {topic: json_schema(contract) for topic, contract in INPUT_CONTRACTS.items()}
#: ``format`` only annotates in draft 2020-12 unless a validator opts in, so the schemas must
#: hold without it: these validators leave it out (the timestamp test also checks with it).
VALIDATORS = {topic: Draft202012Validator(schema) for topic, schema in SCHEMAS.items()}
WITH_FORMATS = {
    topic: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for topic, schema in SCHEMAS.items()
}
#: Drawing messages from these schemas is slow (patterns, arbitrary extra fields): a few
#: dozen per topic and run, and hypothesis keeps the failures it finds for the next run.
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The messages to break carry no extra fields (the other property covers those): faster.
CLOSED = {topic: {**schema, "additionalProperties": False} for topic, schema in SCHEMAS.items()}


def on_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as a worker decodes it: JSON text in UTF-8, read with CartLoom's decoder."""
    return decode_json_object(json.dumps(message, ensure_ascii=False).encode())


def schema_accepts(topic: str, message: dict[str, Any]) -> bool:
    return VALIDATORS[topic].is_valid(message)


def refusal(topic: str, message: dict[str, Any], key: str | None) -> RejectReason | None:
    """Why CartLoom's validator refuses ``message`` with ``key`` (None: it accepts it)."""
    try:
        PARSERS[topic](on_the_wire(message), key=key)
    except InvalidInput as exc:
        return exc.reason
    return None


def validator_accepts(topic: str, message: dict[str, Any], key: str | None) -> bool:
    return refusal(topic, message, key) is None


def key_of(topic: str, message: dict[str, Any]) -> str:
    value: str = message[INPUT_CONTRACTS[topic].key.name]
    return value


def test_committed_schema_files_equal_what_the_validators_generate() -> None:
    assert stale_schemas(CHECKOUT_DIR, CHECKOUT_DOC) == [], "run `cartloom schemas write`"
    assert DOC_MARKER in CHECKOUT_DOC.read_text()
    for topic in TOPICS:
        committed = json.loads((CHECKOUT_DIR / file_name(topic)).read_text())
        assert committed == SCHEMAS[topic]


@pytest.mark.parametrize("topic", TOPICS)
def test_each_schema_is_a_valid_2020_12_schema_that_names_the_key(topic: str) -> None:
    schema = SCHEMAS[topic]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    key = INPUT_CONTRACTS[topic].key.name
    assert schema["x-kafka-key"] == key
    assert (
        f"Kafka key: the UTF-8 bytes of {key}, equal to the value's {key}"
        in (schema["description"])
    )
    assert key in schema["required"]


@pytest.mark.parametrize("topic", TOPICS)
def test_the_schemas_examples_are_accepted_by_both(topic: str) -> None:
    examples = SCHEMAS[topic]["examples"]
    assert examples
    for example in examples:
        assert schema_accepts(topic, example)
        assert validator_accepts(topic, example, key_of(topic, example))


def test_whitespace_is_exactly_what_str_isspace_calls_whitespace() -> None:
    assert set(WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("2026-11-25T10:00:00+00:00", True),
        ("2026-11-25T10:00:00.123456789Z", True),
        ("2024-02-29T00:00:00-05:30", True),
        ("2000-02-29T00:00:00Z", True),
        ("2023-02-29T00:00:00Z", False),  # not a leap year
        ("1900-02-29T00:00:00Z", False),  # a century not divisible by 400
        ("2026-04-31T00:00:00Z", False),
        ("0000-01-01T00:00:00Z", False),  # Python has no year 0
        ("2026-12-31T23:59:60Z", False),  # nor leap seconds
        ("2026-11-25T10:00:00", False),
        ("2026-11-25T24:00:00Z", False),
        ("2026-11-25T10:00:00+24:00", False),
    ],
)
def test_timestamp_pattern_admits_only_instants_python_reads(text: str, accepted: bool) -> None:
    message = {"order_id": "o-1", "event": "paid", "at": text}
    assert schema_accepts("order.events", message) is accepted
    assert WITH_FORMATS["order.events"].is_valid(message) is accepted
    if accepted:
        assert validator_accepts("order.events", message, "o-1")


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY
@given(data=st.data())
def test_every_message_the_schema_accepts_the_validator_accepts(
    topic: str, data: st.DataObject
) -> None:
    message = data.draw(from_schema(SCHEMAS[topic]), label="message")
    assert schema_accepts(topic, message)
    key = key_of(topic, message)
    assert validator_accepts(topic, message, key), message
    assert refusal(topic, message, key + "-other") is RejectReason.KEY_MISMATCH


# ---- one rule broken at a time, derived from the declarations -------------------------


def wrong_type(field: Field) -> Any:
    kind = field.kind
    if isinstance(kind, Integer):
        return "7"
    if isinstance(kind, Boolean):
        return "true"
    if isinstance(kind, AnyObject | Amount):
        return [1]
    if isinstance(kind, Items):
        return "lines"
    assert isinstance(kind, Text | Timestamp | Choice), kind
    return 12345


def beyond_limits(field: Field, valid_item: dict[str, Any] | None) -> list[Any]:
    """Values of the right type that break one of the field's limits."""
    kind = field.kind
    if isinstance(kind, Text):
        return ["", " \t\u3000", "x" * (kind.max_len + 1)]
    if isinstance(kind, Timestamp):
        return [
            "2026-11-25T10:00:00",
            "2026-02-30T10:00:00Z",
            "yesterday",
            "2026-11-25T10:00:00." + "0" * TIMESTAMP_MAX_LEN + "Z",
        ]
    if isinstance(kind, Integer):
        values: list[Any] = [kind.minimum - 1, kind.maximum + 1, 1.5]
        return [*values, 0] if kind.nonzero else values
    if isinstance(kind, Choice):
        return ["shipped", kind.values[0].upper()]
    if isinstance(kind, Items):
        broken: list[Any] = [[5]]
        if kind.min_items:
            broken.append([])
        if kind.max_items is not None and valid_item is not None:
            broken.append([valid_item] * (kind.max_items + 1))
        return broken
    return []


def field_breakages(
    fields: tuple[Field, ...], target: dict[str, Any]
) -> list[tuple[str, dict[str, Any], str, Any]]:
    """(what, object, field, value or DELETE) for each way to break one field of ``target``."""
    broken: list[tuple[str, dict[str, Any], str, Any]] = []
    for field in fields:
        if field.required:
            broken.append((f"{field.name} missing", target, field.name, DELETE))
        broken.append((f"{field.name} of a wrong type", target, field.name, wrong_type(field)))
        if not field.nullable:
            broken.append((f"{field.name} null", target, field.name, None))
        items = target.get(field.name)
        item = items[0] if isinstance(field.kind, Items) and items else None
        for value in beyond_limits(field, item):
            broken.append((f"{field.name} = {str(value)[:40]!r}", target, field.name, value))
        if item is not None:
            assert isinstance(field.kind, Items)
            broken += field_breakages(field.kind.item.fields, item)
    return broken


DELETE = object()


def rule_breakages(contract: MessageContract, message: dict[str, Any]) -> list[Any]:
    """Functions that break one cross-field rule of ``message`` in place."""
    broken: list[Any] = []
    for rule in contract.rules:
        if isinstance(rule, ExactlyOne):
            present = next(name for name in rule.names if name in message)
            other = next(name for name in rule.names if name != present)

            def both(m: dict[str, Any], other: str = other) -> None:
                m[other] = 1

            def neither(m: dict[str, Any], names: tuple[str, ...] = rule.names) -> None:
                for name in names:
                    m.pop(name, None)

            broken += [both, neither]
        elif isinstance(rule, ItemsRequiredWhen):

            def partial_without_items(m: dict[str, Any], rule: ItemsRequiredWhen = rule) -> None:
                m[rule.when] = rule.values[0]
                m.pop(rule.items, None)

            def partial_with_no_items(m: dict[str, Any], rule: ItemsRequiredWhen = rule) -> None:
                m[rule.when] = rule.values[-1]
                m[rule.items] = []

            broken += [partial_without_items, partial_with_no_items]
        else:
            raise AssertionError(f"no breakage for rule {rule!r}")
    return broken


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY
@given(data=st.data())
def test_a_message_with_one_rule_broken_is_refused_by_both(topic: str, data: st.DataObject) -> None:
    message = data.draw(from_schema(CLOSED[topic]), label="valid message")
    key = key_of(topic, message)
    breakages = every_breakage(topic, message)
    what, broken = data.draw(st.sampled_from(breakages), label="one rule broken")
    assert not schema_accepts(topic, broken), f"the schema accepts {what}"
    # The key follows the id when the id stays text, so that the broken rule is what refuses.
    id_now = broken.get(INPUT_CONTRACTS[topic].key.name)
    reason = refusal(topic, broken, id_now if isinstance(id_now, str) else key)
    assert reason is RejectReason.INVALID_SCHEMA, f"the validator accepts {what}"


def test_integers_written_with_a_zero_fraction_are_integers_for_both() -> None:
    message = {"order_id": "o-1", "source": "pos", "created_at": "2026-11-25T10:00:00Z"}
    message["lines"] = [{"sku": "A", "quantity": 2.0}]
    assert schema_accepts("orders", message)
    order = PARSERS["orders"](on_the_wire(message), key="o-1")
    assert order.lines[0].quantity == 2 and type(order.lines[0].quantity) is int


def test_the_integer_bound_is_the_largest_exact_json_integer() -> None:
    assert MAX_SAFE_INTEGER == 2**53 - 1
    assert float(MAX_SAFE_INTEGER) == MAX_SAFE_INTEGER
    assert float(MAX_SAFE_INTEGER + 1) == float(MAX_SAFE_INTEGER + 2)  # beyond: inexact


def test_timestamp_pattern_is_the_one_in_the_schema() -> None:
    at = SCHEMAS["order.events"]["properties"]["at"]
    assert at["pattern"] == TIMESTAMP_PATTERN
    assert at["format"] == "date-time"


def every_breakage(topic: str, message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(what, broken copy of ``message``) for every breakage the declarations name."""
    contract = INPUT_CONTRACTS[topic]
    count = len(field_breakages(contract.fields, message))
    copies = []
    for index in range(count + len(rule_breakages(contract, message))):
        broken = json.loads(json.dumps(message))
        if index < count:
            what, target, name, value = field_breakages(contract.fields, broken)[index]
            if value is DELETE:
                del target[name]
            else:
                target[name] = value
        else:
            rule = rule_breakages(contract, broken)[index - count]
            what = rule.__name__
            rule(broken)
        copies.append((what, broken))
    return copies


@pytest.mark.parametrize("topic", TOPICS)
def test_every_named_breakage_of_every_example_is_refused_by_both(topic: str) -> None:
    """The property above draws one breakage per message; this tries them all, on the examples."""
    tried = 0
    for example in SCHEMAS[topic]["examples"]:
        for what, broken in every_breakage(topic, example):
            assert not schema_accepts(topic, broken), f"the schema accepts {what}"
            id_now = broken.get(INPUT_CONTRACTS[topic].key.name)
            key = id_now if isinstance(id_now, str) else key_of(topic, example)
            assert refusal(topic, broken, key) is RejectReason.INVALID_SCHEMA, (
                f"the validator accepts {what}"
            )
            tried += 1
    assert tried >= 20


def at_the_limits(field: Field) -> list[Any]:
    """Values of ``field`` on the edges of what its declaration allows."""
    kind = field.kind
    if isinstance(kind, Text):
        return ["x" * kind.max_len, "x", " x\u3000"]
    if isinstance(kind, Timestamp):
        longest = "2024-02-29T23:59:59." + "9" * (TIMESTAMP_MAX_LEN - 26) + "+14:00"
        return [longest, "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-00:00"]
    if isinstance(kind, Integer):
        edges = [kind.minimum, kind.maximum, float(kind.maximum)]
        return [value for value in edges if not (kind.nonzero and value == 0)]
    if isinstance(kind, Choice):
        return list(kind.values)
    if isinstance(kind, Items):
        item = {each.name: at_the_limits(each)[0] for each in kind.item.fields}
        return [[item] * (kind.max_items or 50), [item] * max(kind.min_items, 1)]
    if isinstance(kind, Amount):
        return ["0", 0, 1e300]
    if isinstance(kind, AnyObject):
        return [{}]
    assert isinstance(kind, Boolean), kind
    return [True, False]


@pytest.mark.parametrize("topic", TOPICS)
def test_values_on_the_edges_of_every_limit_are_accepted_by_both(topic: str) -> None:
    """Hypothesis seldom draws the longest string or the largest integer: try each edge."""
    contract = INPUT_CONTRACTS[topic]
    example = SCHEMAS[topic]["examples"][0]
    tried = 0
    for field in contract.fields:
        for value in at_the_limits(field):
            message = json.loads(json.dumps(example))
            for rule in contract.rules:
                if isinstance(rule, ExactlyOne) and field.name in rule.names:
                    for name in rule.names:
                        message.pop(name, None)
                if isinstance(rule, ItemsRequiredWhen) and field.name == rule.when:
                    message[rule.items] = [{"sku": "A", "quantity": 1}]
            message[field.name] = value
            key = message[contract.key.name]
            assert schema_accepts(topic, message), f"the schema refuses {field.name}"
            assert validator_accepts(topic, message, key), f"the validator refuses {field.name}"
            tried += 1
    assert tried >= 10
