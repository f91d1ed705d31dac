"""``GET /openapi.json``: the OpenAPI 3.1 document of every HTTP surface a worker serves.

Generated, never written by hand: the answers of the live queries are the public views'
schemas (:mod:`cartloom.domain.public_views`, the same allow-lists that build the
answers), paths and 404 texts come from :data:`cartloom.web.resources.RESOURCES`, header
names from :mod:`cartloom.web.queries`, and the examples are public views of values built
by the domain's own functions. ``docs/openapi.json`` is the committed copy
(:mod:`cartloom.web.api_files` writes and checks it); every worker serves the same text,
without a bearer token (it says only how to call the worker).

``tests/integration/test_openapi.py`` checks live answers (200s and refusals) against the
document's response schemas; ``tests/unit/test_public_views.py`` checks that the document
is valid OpenAPI 3.1.
"""

from __future__ import annotations

import json
from typing import Any

from faust.web import Request, Response, View

from cartloom import __version__
from cartloom.domain.inventory import StockLevel, apply_stock, empty_inventory
from cartloom.domain.orders import ORDER_MESSAGE, new_order_view, parse_order
from cartloom.domain.public_views import PUBLIC_VIEWS
from cartloom.domain.shopify.catalog import CATALOG_CHANGE, read_catalog_change
from cartloom.domain.shopify.state import apply_catalog_change
from cartloom.web.queries import MAX_VERSION, PARTITION_HEADER, SERVED_BY_HEADER
from cartloom.web.resources import RESOURCES, Resource

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = "/openapi.json"
JSON = "application/json"
#: Where a schema of the document lives, for ``$ref``.
SCHEMAS = "#/components/schemas/"
EXAMPLE_NOW = "2026-11-25T10:00:00.000+00:00"

_DESCRIPTION = """\
Every HTTP surface of a CartLoom worker (`cartloom worker`, port `CARTLOOM_WEB_PORT`, \
6066). Any worker answers any key: it serves the key from its own table when it is the \
active owner of the key's partition, and otherwise forwards the request once to the owner \
and relays the answer.

The live queries answer a *public view* of each resource: an allow-list of the fields \
documented here. The table's other fields (the saga's bookkeeping) never leave the worker \
and may change without notice. Field by field: docs/api.md. Who may call what: \
docs/access.md.

A worker over its connection cap (`CARTLOOM_WEB_MAX_CONNECTIONS`) answers any request \
503 with `Retry-After: 1` and `{"error": "too many connections"}`."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{SCHEMAS}{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _closed(properties: dict[str, Any], required: list[str], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _error_schemas() -> dict[str, Any]:
    unavailable = {
        "error": _text(
            "`this worker is not the recovered owner of the key`, `no worker owns the key's "
            "partition yet`, `version not reached`, `owner unreachable` or `too many "
            "connections`."
        ),
        "min_version": {"type": "integer", "description": "The version asked for."},
        "version": {
            "type": ["integer", "null"],
            "description": "The owner's current version (null: no value yet).",
        },
        "owner": _text("The owner's URL, when it could not be reached."),
        "detail": _text("Why the owner could not be reached."),
    }
    schemas: dict[str, Any] = {
        "Error": _closed({"error": _text("What was wrong.")}, ["error"], "A refusal."),
        "Unavailable": _closed(
            unavailable,
            ["error"],
            "Not answerable now (ownership moving, the owner unreachable, `min_version` not "
            "reached in time): retry after `Retry-After` seconds.",
        ),
    }
    for resource in RESOURCES:
        schemas[_not_found_name(resource)] = _closed(
            {
                "error": {"type": "string", "const": resource.not_found},
                resource.param: _text("The key asked for."),
            },
            ["error", resource.param],
            f"No {resource.entity} with this key.",
        )
    return schemas


def _operations_schemas() -> dict[str, Any]:
    readiness = {
        "ready": {"type": "boolean", "description": "The conjunction of the conditions."},
        "recovered": {"type": "boolean", "description": "Tables recovered after the join."},
        "rebalancing": {"type": "boolean", "description": "A rebalance is running."},
        "rebalancing_seconds": {"type": "number", "description": "For how long."},
        "rebalance_stuck": {"type": "boolean", "description": "Running too long: unready."},
        "broker_reachable": {"type": "boolean", "description": "A broker answered lately."},
        "active_partitions": {"type": "integer", "minimum": 0},
        "standby_partitions": {"type": "integer", "minimum": 0},
    }
    return {
        "Health": _closed({"status": {"type": "string", "const": "ok"}}, ["status"], "Alive."),
        "Readiness": _closed(readiness, list(readiness), "Whether to send this worker traffic."),
        "WebhookAccepted": _closed(
            {"status": {"type": "string", "const": "accepted"}},
            ["status"],
            "The delivery is durably in `shopify.webhooks`.",
        ),
        "SchemaIndex": _closed(
            {"schemas": {"type": "object", "additionalProperties": {"type": "string"}}},
            ["schemas"],
            "Topic -> where its JSON Schema is served.",
        ),
        "SchemaNotFound": _closed(
            {
                "error": {"type": "string", "const": "no schema for this topic"},
                "topic": _text("The topic asked for."),
                "schemas": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ["error", "topic", "schemas"],
            "No published schema for this topic; the index of those there are.",
        ),
    }


def _not_found_name(resource: Resource) -> str:
    return f"{resource.view.title}NotFound"


def _headers() -> dict[str, Any]:
    headers = {
        "ServedBy": {
            "description": "The canonical URL of the worker that read its table.",
            "schema": {"type": "string"},
        },
        "Partition": {
            "description": "The key's partition of the table.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "RetryAfter": {"description": "Seconds to wait before retrying.", "schema": _int()},
        "WWWAuthenticate": {
            "description": 'The scheme the queries ask for: `Bearer realm="cartloom"`.',
            "schema": {"type": "string"},
        },
    }
    return {name: {**header, "required": True} for name, header in headers.items()}


def _int() -> dict[str, Any]:
    return {"type": "integer", "minimum": 0}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def examples() -> dict[str, dict[str, Any]]:
    """An answer per public view: the view of a value the domain's own functions built."""
    order = new_order_view(parse_order(ORDER_MESSAGE.examples[0]), EXAMPLE_NOW)
    level = StockLevel("MUG-RED", 40, updated_at=EXAMPLE_NOW)
    stock, _ = apply_stock(
        empty_inventory("MUG-RED", EXAMPLE_NOW), level, offset=0, now=EXAMPLE_NOW
    )
    product = apply_catalog_change(None, read_catalog_change(CATALOG_CHANGE.examples[0]))
    values = {"order": order, "inventory": stock, "product": product}
    return {name: PUBLIC_VIEWS[name].project(value) for name, value in values.items()}


def _query(resource: Resource, example: dict[str, Any]) -> dict[str, Any]:
    title = resource.view.title
    found_headers = {SERVED_BY_HEADER: _header("ServedBy"), PARTITION_HEADER: _header("Partition")}
    return {
        "get": {
            "tags": [resource.entity],
            "operationId": f"get{title}",
            "summary": f"The {resource.entity}'s public view, from the key's owner",
            "description": (
                f"Answers the {title} view of `{resource.table}`. With `min_version`, the "
                "owner waits (at most `CARTLOOM_QUERY_WAIT_MAX_SECONDS`) until the value's "
                "`version` reaches it: read your own write."
            ),
            "security": [{"bearerToken": []}],
            "parameters": [
                {
                    "name": resource.param,
                    "in": "path",
                    "required": True,
                    "description": "The key, percent-encoded (any text).",
                    "schema": {"type": "string", "minLength": 1},
                },
                {"$ref": "#/components/parameters/MinVersion"},
            ],
            "responses": {
                "200": {
                    "description": f"The {resource.entity}'s public view.",
                    "headers": found_headers,
                    "content": {JSON: {"schema": _ref(title), "example": example}},
                },
                "400": _json(_ref("Error"), "`min_version` is not an integer in range."),
                "401": _json(
                    _ref("Error"),
                    "The bearer token is missing or wrong (only when the worker has one).",
                    headers={"WWW-Authenticate": _header("WWWAuthenticate")},
                ),
                "404": _json(
                    _ref(_not_found_name(resource)),
                    f"No {resource.entity} with this key.",
                    headers=found_headers,
                ),
                "503": _json(
                    _ref("Unavailable"),
                    "Not answerable now; retry.",
                    headers={"Retry-After": _header("RetryAfter")},
                ),
            },
        }
    }


def _webhooks() -> dict[str, Any]:
    def shopify_header(name: str, description: str) -> dict[str, Any]:
        schema = {"type": "string"}
        return {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": schema,
        }

    refusal = _ref("Error")
    return {
        "post": {
            "tags": ["shopify"],
            "operationId": "receiveShopifyWebhook",
            "summary": "A Shopify webhook delivery (docs/shopify.md)",
            "description": (
                "Verified, checked and durably enqueued in `shopify.webhooks` before the 200; "
                "any other answer makes Shopify retry."
            ),
            "security": [{"shopifyHmac": []}],
            "parameters": [
                shopify_header("X-Shopify-Topic", "The webhook topic (`orders/create`...)."),
                shopify_header("X-Shopify-Shop-Domain", "The shop's myshopify.com domain."),
                shopify_header("X-Shopify-Webhook-Id", "The delivery's id."),
            ],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(_ref("WebhookAccepted"), "Enqueued durably."),
                "400": _json(refusal, "Not JSON, a header missing, or not the topic's shape."),
                "401": _json(refusal, "The signature is missing or wrong, or a foreign shop."),
                "408": _json(refusal, "The body took longer than its deadline."),
                "413": _json(refusal, "The body is over `CARTLOOM_SHOPIFY_WEBHOOK_MAX_BYTES`."),
                "503": _json(refusal, "Cannot enqueue now (Kafka unavailable); Shopify retries."),
            },
        }
    }


def _simple_get(
    tag: str, operation: str, summary: str, responses: dict[str, Any]
) -> dict[str, Any]:
    return {
        "get": {"tags": [tag], "operationId": operation, "summary": summary, "responses": responses}
    }


def _paths() -> dict[str, Any]:
    samples = examples()
    paths: dict[str, Any] = {
        resource.path: _query(resource, samples[resource.entity]) for resource in RESOURCES
    }
    paths["/webhooks/shopify"] = _webhooks()
    paths["/healthz"] = _simple_get(
        "operations",
        "getHealth",
        "Liveness: 200 while the event loop answers",
        {"200": _json(_ref("Health"), "Alive.")},
    )
    paths["/readyz"] = _simple_get(
        "operations",
        "getReadiness",
        "Readiness: recovered, not stuck rebalancing, broker reachable",
        {
            "200": _json(_ref("Readiness"), "Ready."),
            "503": _json(_ref("Readiness"), "Not ready; the report says why."),
        },
    )
    paths["/metrics"] = _simple_get(
        "operations",
        "getMetrics",
        "Prometheus metrics (text exposition format)",
        {
            "200": {
                "description": "Faust's and CartLoom's metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    paths["/schemas"] = _simple_get(
        "contracts",
        "listSchemas",
        "The input topics with a published JSON Schema",
        {"200": _json(_ref("SchemaIndex"), "Topic -> schema path.")},
    )
    paths["/schemas/{topic}.json"] = _simple_get(
        "contracts",
        "getSchema",
        "One input topic's JSON Schema (docs/producers.md)",
        {
            "200": {
                "description": "The schema.",
                "content": {"application/schema+json": {"schema": {"type": "object"}}},
            },
            "404": _json(_ref("SchemaNotFound"), "No schema for this topic."),
        },
    )
    paths["/schemas/{topic}.json"]["get"]["parameters"] = [
        {"name": "topic", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    paths[DOCUMENT_PATH] = _simple_get(
        "contracts",
        "getOpenApi",
        "This document",
        {"200": _json({"type": "object"}, "The OpenAPI 3.1 document.")},
    )
    return paths


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's HTTP API."""
    views = {view.title: view.json_schema() for view in PUBLIC_VIEWS.values()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "CartLoom worker API",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "tags": [
            {"name": "order", "description": "Orders and their reservations."},
            {"name": "inventory", "description": "Stock per SKU."},
            {"name": "product", "description": "Shopify products."},
            {"name": "shopify", "description": "Shopify's webhooks."},
            {"name": "operations", "description": "Probes and metrics."},
            {"name": "contracts", "description": "Machine-readable contracts."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": {**views, **_error_schemas(), **_operations_schemas()},
            "parameters": {
                "MinVersion": {
                    "name": "min_version",
                    "in": "query",
                    "required": False,
                    "description": (
                        "Wait until the value's `version` is at least this (503 with the "
                        "current version if it is not within the wait)."
                    ),
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                }
            },
            "headers": _headers(),
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "`CARTLOOM_API_TOKEN`. Every deployment of this repository sets one; "
                        "a worker started without it answers queries to anyone."
                    ),
                },
                "shopifyHmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Shopify-Hmac-Sha256",
                    "description": (
                        "Base64 HMAC-SHA256 of the raw body with the app's webhook secret."
                    ),
                },
            },
        },
    }


def openapi_text() -> str:
    """The document as served and committed: 2-space JSON, ASCII, final newline."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=True) + "\n"


def register_openapi(app: Any) -> None:
    """Add ``GET /openapi.json`` to ``app`` (public: no bearer token)."""
    body = openapi_text().encode()

    @app.page(DOCUMENT_PATH)
    class OpenApiDocument(View):
        """``GET /openapi.json``: the OpenAPI 3.1 document of this worker's API."""

        async def get(self, request: Request) -> Response:
            """The document, as JSON."""
            return self.bytes(body, content_type=JSON)
