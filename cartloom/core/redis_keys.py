"""Every Redis key CartLoom reads or writes, in one place, under the deployment's namespace.

Two CartLoom deployments may share one Redis (``CARTLOOM_NAMESPACE``): each key of a
namespaced deployment starts with ``{namespace}:``, so their views, leases, cursors and
budgets never meet (write-back progress lives in Kafka, under the topic prefix). The
default deployment (no namespace) keeps the plain ``cartloom:...`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The view key of each materialised entity, before the id.
VIEW_PREFIX: dict[str, str] = {
    "orders": "cartloom:order:",
    "inventory": "cartloom:inventory:",
    "products": "cartloom:product:",
}


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one deployment (``namespace`` empty: the default deployment)."""

    namespace: str = ""

    @property
    def _prefix(self) -> str:
        return f"{self.namespace}:" if self.namespace else ""

    def view_prefix(self, entity: str) -> str:
        """What every view key of ``entity`` starts with (for scans)."""
        return f"{self._prefix}{VIEW_PREFIX[entity]}"

    def view(self, entity: str, key: str) -> str:
        """The hash holding ``entity`` ``key``'s view (``version`` and ``doc``)."""
        return f"{self.view_prefix(entity)}{key}"

    def reconcile_lease(self) -> str:
        """Held by the one worker running periodic reconciliation."""
        return f"{self._prefix}cartloom:shopify:reconcile:lease"

    def reconcile_cursor(self, shop: str) -> str:
        """The ``updated_at`` reconciliation has read ``shop``'s orders up to."""
        return f"{self._prefix}cartloom:shopify:reconcile:cursor:{shop}"

    def api_budget(self, shop: str) -> str:
        """The token bucket of ``shop``'s Admin API cost, shared by every replica."""
        return f"{self._prefix}cartloom:shopify:budget:{shop}"
