"""``GET /schemas`` and ``GET /schemas/{topic}.json``: the input topics' JSON Schemas.

Every worker serves the schemas of ``orders``, ``order.events`` and ``inventory`` (the
topics producers outside CartLoom write), generated from the validators' declarations
(:mod:`cartloom.domain.schemas`): the same text as the committed ``docs/schemas/`` files.
They are public: unlike the live queries they need no bearer token, since they say only
what CartLoom accepts.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from cartloom.domain.schemas import INPUT_CONTRACTS
from cartloom.web.schema_files import file_name, schema_texts

#: The media type of a JSON Schema document.
SCHEMA_CONTENT_TYPE = "application/schema+json"
INDEX_PATH = "/schemas"
SCHEMA_PATH = "/schemas/{topic}.json"


def schema_url(topic: str) -> str:
    """Where a worker serves ``topic``'s schema."""
    return SCHEMA_PATH.format(topic=topic)


def register_schemas(app: Any) -> None:
    """Add ``GET /schemas`` (the index) and ``GET /schemas/{topic}.json`` to ``app``."""
    texts = schema_texts()
    bodies = {topic: texts[file_name(topic)].encode() for topic in INPUT_CONTRACTS}
    index = {"schemas": {topic: schema_url(topic) for topic in bodies}}

    @app.page(INDEX_PATH)
    class SchemaIndex(View):
        """``GET /schemas``: the topics with a published schema, and where each is."""

        async def get(self, request: Request) -> Response:
            """The index, as JSON."""
            return self.json(index)

    @app.page(SCHEMA_PATH)
    class SchemaDocument(View):
        """``GET /schemas/{topic}.json``: one topic's schema; 404 for any other topic."""

        async def get(self, request: Request, **_: Any) -> Response:
            """The schema as ``application/schema+json``."""
            topic = request.match_info["topic"]
            body = bodies.get(topic)
            if body is None:
                error = {"error": "no schema for this topic", "topic": topic, **index}
                return self.json(error, status=404)
            return self.bytes(body, content_type=SCHEMA_CONTENT_TYPE)
