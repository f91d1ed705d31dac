"""The public views: allow-lists over the table values, their schemas and the API document.

What is held here: a view answers its declared fields and nothing else, whatever the
stored value holds (the saga's bookkeeping, or a field nobody declared, at any depth);
every field of a table value is either public or on the documented internal list; the
views of values the domain builds validate against the schemas the API document
publishes; the document is valid OpenAPI 3.1 and describes every surface docs/access.md
lists; the committed docs/openapi.json and docs/api.md tables are what the code generates.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.versions import consts as spec_versions
from openapi_spec_validator.versions.shortcuts import get_spec_version

from cartloom.domain.inventory import (
    InventoryView,
    StockAdjustment,
    StockLevel,
    apply_stock,
    empty_inventory,
)
from cartloom.domain.ledger import ReserveOutcome, ReserveResult
from cartloom.domain.lifecycle import apply_order_event, parse_order_event
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.public_shapes import View
from cartloom.domain.public_views import (
    ORDER,
    PRODUCT,
    PUBLIC_VIEWS,
    STOCK,
    public_order,
    public_product,
    public_stock,
)
from cartloom.domain.saga import apply_reservation_result
from cartloom.domain.shopify.catalog import CATALOG_CHANGE, PRODUCT_FIELDS, read_catalog_change
from cartloom.domain.shopify.state import apply_catalog_change, redacted
from cartloom.web.api_files import stale_api_files
from cartloom.web.openapi import examples, openapi_document
from cartloom.web.resources import RESOURCES

NOW = "2026-11-25T10:00:00.000+00:00"
LATER = "2026-11-25T10:00:01.000+00:00"
TTL = 600.0

#: The fields of a table value that are bookkeeping: never in an answer (docs/api.md).
ORDER_INTERNAL = {"deferred", "recent_events", "last_event_version", "last_event_at", "deadline_at"}
STOCK_INTERNAL = {
    "level_at",
    "source_offset",
    "forwarded_offsets",
    "recent_adjustments",
    "command_offset",
}


def placed(order_id: str = "o-1", **extra: Any) -> OrderView:
    payload: dict[str, Any] = {
        "order_id": order_id,
        "source": "web",
        "created_at": "2026-11-25 10:00:00+01:00",  # ISO-8601 but not RFC 3339: kept as sent
        "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
        "currency": "EUR",
        "total_price": "30.00",
        "customer": {"id": 7, "email": "ada@example.com"},
        **extra,
    }
    return new_order_view(parse_order(payload), NOW)


def result(line: int, sku: str, requested: int, granted: int) -> ReserveResult:
    outcome = ReserveOutcome.RESERVED if granted == requested else ReserveOutcome.SHORT
    return ReserveResult("o-1", line, sku, requested, granted, 10, outcome)


def busy_order() -> OrderView:
    """An order with every piece of bookkeeping filled: a deferred event, applied events."""
    view = placed()
    paid = parse_order_event({"order_id": "o-1", "event": "paid", "at": LATER, "version": 2})
    view = apply_order_event(view, paid, LATER).view  # deferred: the reservation is pending
    assert view["deferred"]
    for line, sku, quantity in ((0, "A", 2), (1, "B", 1)):
        step = apply_reservation_result(
            view, result(line, sku, quantity, quantity), LATER, ttl_seconds=TTL
        )
        view = step.view
    assert view["status"] == "paid" and view["recent_events"] and view["last_event_version"]
    # What the saga would still hold mid-flight, filled so that leaving it out is visible.
    view["deferred"] = [{"order_id": "o-1", "event": "fulfilled", "at": LATER}]
    view["deadline_at"] = LATER
    view["last_event_at"] = LATER
    return view


def busy_stock() -> InventoryView:
    stock, _ = apply_stock(
        empty_inventory("A", NOW), StockLevel("A", 5, "berlin-1", NOW), offset=3, now=NOW
    )
    stock, _ = apply_stock(
        stock,
        StockAdjustment("A", 2, "berlin-1", adjustment_id="rma-1"),
        offset=4,
        now=NOW,
        forwarded_from=(1, 9),
    )
    stock["command_offset"] = 12
    return stock


def product() -> dict[str, Any]:
    return apply_catalog_change(None, read_catalog_change(CATALOG_CHANGE.examples[0]))


def deleted_product() -> dict[str, Any]:
    return apply_catalog_change(product(), read_catalog_change(CATALOG_CHANGE.examples[1]))


def keys_of(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


# -- the allow-lists -------------------------------------------------------------------


def test_every_order_field_is_public_or_internal() -> None:
    """A field added to OrderView fails here until it is declared public or internal."""
    stored = keys_of(OrderView) | {"redacted_at"}  # redacted_at: set by a privacy request
    assert stored - set(ORDER.names) == ORDER_INTERNAL
    assert set(ORDER.names) <= stored


def test_every_stock_field_is_public_or_internal() -> None:
    assert keys_of(InventoryView) - set(STOCK.names) == STOCK_INTERNAL
    assert set(STOCK.names) <= keys_of(InventoryView)


def test_a_product_answers_the_catalog_fields_and_its_version() -> None:
    assert set(PRODUCT.names) == {field.name for field in PRODUCT_FIELDS} | {"version"}


def test_an_order_answers_its_public_fields_and_none_of_the_bookkeeping() -> None:
    view = busy_order()
    public = public_order(view)
    assert list(public) == list(ORDER.names)
    assert not ORDER_INTERNAL & set(public)
    for name in ORDER.names:  # what is public is answered as stored
        assert public[name] == view.get(name), name
    assert public["status"] == "paid" and public["version"] == view["version"]


def test_stock_answers_its_counts_and_none_of_the_bookkeeping() -> None:
    stock = busy_stock()
    assert set(stock) >= STOCK_INTERNAL
    public = public_stock(stock)
    assert list(public) == list(STOCK.names)
    assert not STOCK_INTERNAL & set(public)
    assert (public["on_hand"], public["reserved"], public["available"]) == (7, 0, 7)
    assert public["locations"] == {"berlin-1": 7}


def test_a_deleted_product_answers_a_marker_with_every_field() -> None:
    public = public_product(deleted_product())
    assert list(public) == list(PRODUCT.names)
    assert public["deleted"] is True
    assert public["variants"] == []
    assert public["title"] is None
    assert public["version"] == 2


def test_fields_a_value_lacks_are_null_or_empty() -> None:
    view: dict[str, Any] = dict(placed())
    for name in ("currency", "total_price", "customer", "oversold", "expires_at"):
        view.pop(name)
    public = public_order(view)
    assert public["customer"] is None and public["currency"] is None
    assert public["oversold"] == []
    assert public["redacted_at"] is None
    stock: dict[str, Any] = dict(busy_stock())
    del stock["oversold"]
    assert public_stock(stock)["oversold"] == 0


def test_a_redacted_order_answers_no_customer_and_when() -> None:
    cleaned = redacted(dict(placed()), LATER)
    assert cleaned is not None
    public = public_order(cleaned)
    assert public["customer"] is None
    assert public["redacted_at"] == LATER
    assert "ada@example.com" not in repr(public)


def test_the_answer_shares_nothing_with_the_table_value() -> None:
    view = placed()
    public = public_order(view)
    public["customer"]["email"] = "changed"
    public["lines"][0]["quantity"] = 99
    public["reservations"][0]["granted"] = 5
    assert view["customer"] == {"id": 7, "email": "ada@example.com"}
    assert view["lines"][0]["quantity"] == 2
    assert view["reservations"][0]["granted"] is None


def test_a_stored_value_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(TypeError):
        ORDER.project(["not", "an", "object"])


JSON_LEAF = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
EXTRA = st.dictionaries(st.text(min_size=1, max_size=12), JSON_VALUE, min_size=1, max_size=4)


def with_extras(value: Any, view: View, extras: dict[str, Any]) -> Any:
    """``value`` with ``extras`` (undeclared names only) added to it and to its nested objects."""
    added = dict(value)
    for name, extra in extras.items():
        if name not in view.names:
            added[name] = copy.deepcopy(extra)
    for field in view.fields:
        nested = getattr(field.shape, "item", field.shape)
        if not isinstance(nested, View) or added.get(field.name) is None:
            continue
        if isinstance(added[field.name], list):
            added[field.name] = [with_extras(item, nested, extras) for item in added[field.name]]
        else:
            added[field.name] = with_extras(added[field.name], nested, extras)
    return added


@settings(max_examples=60, deadline=None)
@given(extras=EXTRA, which=st.sampled_from(["order", "rejected", "stock", "product", "deleted"]))
def test_an_undeclared_field_never_leaks_at_any_depth(extras: dict[str, Any], which: str) -> None:
    """Whatever a value holds beyond its view (today or after a change), no answer shows it."""
    values: dict[str, tuple[View, Any]] = {
        "order": (ORDER, busy_order()),
        "rejected": (ORDER, rejected_order()),
        "stock": (STOCK, busy_stock()),
        "product": (PRODUCT, product()),
        "deleted": (PRODUCT, deleted_product()),
    }
    view, value = values[which]
    assert view.project(with_extras(value, view, extras)) == view.project(value)


def rejected_order() -> OrderView:
    step = apply_reservation_result(placed(), result(0, "A", 2, 0), LATER, ttl_seconds=TTL)
    assert step.view["rejection"] is not None
    return step.view


# -- the schemas ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "value"),
    [
        (ORDER, placed()),
        (ORDER, busy_order()),
        (ORDER, rejected_order()),
        (ORDER, redacted(dict(placed()), LATER)),
        (STOCK, busy_stock()),
        (STOCK, empty_inventory("A", NOW)),
        (PRODUCT, product()),
        (PRODUCT, deleted_product()),
    ],
    ids=["placed", "paid", "rejected", "redacted", "stock", "empty-stock", "product", "deleted"],
)
def test_public_views_of_domain_values_match_their_schema(view: View, value: Any) -> None:
    Draft202012Validator(view.json_schema()).validate(view.project(value))


def test_a_schema_refuses_a_field_the_view_does_not_declare() -> None:
    answer = {**public_order(placed()), "deferred": []}
    assert not Draft202012Validator(ORDER.json_schema()).is_valid(answer)


def test_the_document_examples_match_their_schemas() -> None:
    for name, example in examples().items():
        Draft202012Validator(PUBLIC_VIEWS[name].json_schema()).validate(example)


# -- the OpenAPI document ---------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert get_spec_version(document) == spec_versions.OPENAPIV31
    validate(document)


def test_the_document_publishes_each_view_as_the_query_answer() -> None:
    document = openapi_document()
    for resource in RESOURCES:
        ok = document["paths"][resource.path]["get"]["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{resource.view.title}"
        }
        assert document["components"]["schemas"][resource.view.title] == resource.view.json_schema()


def test_the_document_describes_every_surface_docs_access_lists() -> None:
    """Every worker row of docs/access.md that someone calls (not Faust's) has its path."""
    text = (Path(__file__).parents[2] / "docs" / "access.md").read_text()
    section = text.split("## The worker", 1)[1].split("\n## ", 1)[0]
    documented = openapi_document()["paths"]
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        if cells[2].startswith("nobody") or cells[0] == "`/`":
            continue
        for path in re.findall(r"`([^`]+)`", cells[0]):
            assert cells[1].lower() in documented.get(path, {}), (path, cells[1])


def test_the_committed_document_and_tables_are_current() -> None:
    assert stale_api_files() == [], "run .venv/bin/python -m cartloom.web.api_files"
