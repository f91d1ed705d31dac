"""The resources the live queries serve: path, table, key parameter, public view, 404 text.

Declared once for the views that answer them (:mod:`cartloom.web.views`) and the API
document that describes them (:mod:`cartloom.web.openapi`). Importing this module builds
no app: the document can be generated without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from cartloom.domain.public_shapes import View
from cartloom.domain.public_views import ORDER, PRODUCT, STOCK


@dataclass(frozen=True, slots=True)
class Resource:
    """One queryable resource: ``GET /{collection}/{param}`` answers ``view`` of ``table``."""

    collection: str  #: the first path segment (``orders``)
    table: str  #: the table's name in :mod:`cartloom.stream.tables`
    param: str  #: the path parameter holding the key
    entity: str  #: the metric label and the OpenAPI tag
    view: View  #: the public view answered (an allow-list of the table value's fields)
    not_found: str  #: the 404 answer's ``error``

    @property
    def path(self) -> str:
        """The path as the API document writes it: ``/orders/{order_id}``."""
        return f"/{self.collection}/{{{self.param}}}"

    @property
    def route(self) -> str:
        """The path as the router matches it: any text, ``/`` and line breaks included.

        aiohttp's default parameter pattern refuses ``{``, ``}``, ``/`` and line breaks,
        which ids may hold (an order ``a{b`` was stored and could not be read; found by
        fuzzing, tests/integration/test_fuzz_http.py).
        """
        return f"/{self.collection}/{{{self.param}:[\\s\\S]+}}"


RESOURCES = (
    Resource("orders", "order_by_id", "order_id", "order", ORDER, "order not found"),
    Resource("inventory", "inventory_by_sku", "sku", "inventory", STOCK, "sku not found"),
    Resource("products", "product_by_id", "product_id", "product", PRODUCT, "product not found"),
)
