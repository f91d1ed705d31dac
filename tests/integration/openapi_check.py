"""Checking a live HTTP answer against the OpenAPI document a worker serves.

:class:`ApiDocument` finds the documented response of an operation for the answer's
status, and checks that the content type is documented, the body validates against the
response's schema (JSON Schema 2020-12, OpenAPI 3.1's dialect, with the document's own
``$ref`` targets resolved by ``referencing``) and every required header is there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

BASE = "urn:cartloom:openapi"


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class ApiDocument:
    """One OpenAPI document, and the responses it documents."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            BASE, DRAFT202012.create_resource(document)
        )
        #: (path template, method, status) of every answer checked so far.
        self.checked: set[tuple[str, str, int]] = set()

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """``node``, or what its ``$ref`` (``#/components/...``) points at."""
        while "$ref" in node:
            target: Any = self.document
            for token in node["$ref"].removeprefix("#/").split("/"):
                target = target[token.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def validate(self, pointer: list[str], instance: Any) -> None:
        """Validate ``instance`` against the schema at ``pointer`` (tokens) in the document."""
        reference = f"{BASE}#/" + "/".join(_escape(token) for token in pointer)
        Draft202012Validator({"$ref": reference}, registry=self.registry).validate(instance)

    def check(
        self,
        path: str,
        method: str,
        status: int,
        content_type: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        """Fail unless the answer is one the document gives ``method path``."""
        method = method.lower()
        operation = self.document["paths"][path][method]
        responses = operation["responses"]
        key = str(status) if str(status) in responses else "default"
        assert key in responses, f"{method} {path}: {status} is not documented ({body[:200]!r})"
        response = self.resolve(responses[key])
        for name, header in response.get("headers", {}).items():
            header = self.resolve(header)
            if header.get("required"):
                assert name in headers, f"{method} {path} {status}: no {name} header"
            if name in headers and header["schema"].get("type") == "integer":
                assert headers[name].isdigit(), (name, headers[name])
        content = response.get("content", {})
        assert content_type in content, (
            f"{method} {path} {status}: {content_type} is not documented ({sorted(content)})"
        )
        pointer = ["paths", path, method, "responses", key, "content", content_type, "schema"]
        if content_type.endswith("json"):
            self.validate(pointer, json.loads(body))
        else:
            self.validate(pointer, body.decode())
        self.checked.add((path, method, status))

    async def answer(self, path: str, response: aiohttp.ClientResponse) -> tuple[int, Any]:
        """Check an aiohttp answer to ``path`` (the document's template); its status and body.

        The body is the decoded JSON for a JSON answer, the text otherwise.
        """
        body = await response.read()
        self.check(
            path,
            response.method,
            response.status,
            response.content_type,
            response.headers,
            body,
        )
        decoded = json.loads(body) if response.content_type.endswith("json") else body.decode()
        return response.status, decoded
