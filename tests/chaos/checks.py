"""The invariants a scenario checks on the final tables, with the offenders named.

Given the order ids published and the three tables read from their changelogs:

- **lost**: a published order id that ``order_by_id`` does not hold;
- **stuck**: an order still ``received`` (its reservation never resolved);
- **oversold** (units, per SKU): orders in a holding status hold more units of a SKU than
  its stock counts as ``reserved``, or ``reserved`` exceeds ``on_hand``;
- **leaked** (units, per SKU): the stock counts more units ``reserved`` than the orders in
  a holding status hold, i.e. units held for nobody; and every rejected order whose
  ledger entries still hold units is named;
- **ledger mismatches**: a SKU whose ``reserved`` differs from the sum its ledger entries
  hold (stock and its idempotency record disagree).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Statuses in which an order holds its granted units out of ``available``.
HOLDING = frozenset({"reserved", "paid", "partially_fulfilled"})
RESOLVED = frozenset({"reserved", "rejected"})
SHOW = 12  # offenders listed per kind in a message


@dataclass
class SkuFigures:
    on_hand: int = 0
    reserved: int = 0
    held_by_orders: int = 0  # by orders in a holding status, per their own views
    held_by_ledger: int = 0  # by every ledger entry of the SKU

    @property
    def oversold(self) -> int:
        return max(0, self.held_by_orders - self.reserved) + max(0, self.reserved - self.on_hand)

    @property
    def leaked(self) -> int:
        return max(0, self.reserved - self.held_by_orders)


@dataclass
class Verdict:
    """Everything the invariants found; ``problems()`` says what is wrong, in words."""

    orders: int
    statuses: Counter[str]
    lost: list[str]
    stuck: list[str]
    unexpected: dict[str, str]  # order id -> a status outside the expected ones
    skus: dict[str, SkuFigures]
    rejected_holding: list[str]  # "order#line sku: n units"
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_plentiful: list[str] = field(default_factory=list)

    @property
    def oversold(self) -> int:
        return sum(f.oversold for f in self.skus.values())

    @property
    def leaked(self) -> int:
        return sum(f.leaked for f in self.skus.values())

    @property
    def ledger_mismatches(self) -> dict[str, tuple[int, int]]:
        return {
            sku: (f.reserved, f.held_by_ledger)
            for sku, f in self.skus.items()
            if f.reserved != f.held_by_ledger
        }

    def figures(self) -> dict[str, Any]:
        """The counts, for the summary line and the results file."""
        return {
            "orders": self.orders,
            "statuses": dict(sorted(self.statuses.items())),
            "lost": len(self.lost),
            "stuck": len(self.stuck),
            "unexpected_status": len(self.unexpected),
            "oversold_units": self.oversold,
            "oversold_skus": sum(1 for f in self.skus.values() if f.oversold),
            "leaked_units": self.leaked,
            "leaked_skus": sum(1 for f in self.skus.values() if f.leaked),
            "rejected_holding": len(self.rejected_holding),
            "ledger_mismatch_skus": len(self.ledger_mismatches),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "rejected_plentiful": len(self.rejected_plentiful),
        }

    def offenders(self) -> dict[str, Any]:
        """Who broke what (every offender, for the results file)."""
        return {
            "lost": self.lost,
            "stuck": self.stuck,
            "unexpected_status": self.unexpected,
            "oversold": {s: vars(f) for s, f in self.skus.items() if f.oversold},
            "leaked": {s: vars(f) for s, f in self.skus.items() if f.leaked},
            "rejected_holding": self.rejected_holding,
            "ledger_mismatch": {s: list(v) for s, v in self.ledger_mismatches.items()},
            "rejected_plentiful": self.rejected_plentiful,
        }

    def problems(self, *, reject_plentiful: bool = False) -> list[str]:
        """One sentence per broken invariant, naming the first offenders."""
        out = []
        if self.lost:
            out.append(f"lost {len(self.lost)} published orders: {_first(self.lost)}")
        if self.stuck:
            out.append(f"stuck {len(self.stuck)} orders still 'received': {_first(self.stuck)}")
        if self.unexpected:
            shown = _first([f"{k}={v}" for k, v in self.unexpected.items()])
            out.append(f"{len(self.unexpected)} orders in an unexpected status: {shown}")
        for sku, f in self.skus.items():
            if f.oversold:
                out.append(
                    f"oversold {f.oversold} units of {sku}: on_hand {f.on_hand}, reserved "
                    f"{f.reserved}, held by orders {f.held_by_orders}"
                )
            if f.leaked:
                out.append(
                    f"leaked {f.leaked} units of {sku}: reserved {f.reserved}, held by orders "
                    f"{f.held_by_orders}, by ledger entries {f.held_by_ledger}"
                )
        if self.rejected_holding:
            out.append(
                f"{len(self.rejected_holding)} ledger entries of closed orders still hold "
                f"units: {_first(self.rejected_holding)}"
            )
        for sku, (reserved, ledger) in list(self.ledger_mismatches.items())[:SHOW]:
            out.append(
                f"ledger mismatch on {sku}: stock reserved {reserved}, ledger holds {ledger}"
            )
        if reject_plentiful and self.statuses.get("rejected"):
            reasons = dict(self.rejected_by_reason)
            out.append(
                f"{self.statuses['rejected']} orders rejected with plentiful stock: {reasons}"
            )
        return out


def _first(items: list[str]) -> str:
    more = f" ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def _line_held(line: dict[str, Any]) -> int:
    granted = line.get("granted") or 0
    return int(granted) - int(line.get("released") or 0) - int(line.get("fulfilled") or 0)


def rejection_reason(view: dict[str, Any]) -> str:
    """``insufficient stock``, ``deadline`` or what the order's last history entry says."""
    reason = str((view.get("history") or [{}])[-1].get("reason") or "")
    if reason.startswith("insufficient stock"):
        return "insufficient stock"
    if "deadline" in reason:
        return "deadline"
    return reason or "unknown"


def judge(
    published: list[str],
    tables: dict[str, dict[str, Any]],
    *,
    expected: frozenset[str] = RESOLVED,
    plentiful: frozenset[str] = frozenset(),
) -> Verdict:
    """Check the invariants for ``published`` order ids over the final ``tables``."""
    orders, stock, ledger = (
        tables["order_by_id"],
        tables["inventory_by_sku"],
        tables["reservation_by_line"],
    )
    statuses: Counter[str] = Counter()
    lost, stuck, unexpected, rejected_plentiful = [], [], {}, []
    reasons: Counter[str] = Counter()
    for order_id in published:
        view = orders.get(order_id)
        if view is None:
            lost.append(order_id)
            continue
        status = view.get("status", "?")
        statuses[status] += 1
        if status == "received":
            stuck.append(order_id)
        elif status not in expected:
            unexpected[order_id] = status
        if status == "rejected":
            reasons[rejection_reason(view)] += 1
            if all(line.get("sku") in plentiful for line in view.get("lines", ())):
                rejected_plentiful.append(f"{order_id} ({rejection_reason(view)})")

    skus: dict[str, SkuFigures] = {}
    for sku, view in stock.items():
        skus[sku] = SkuFigures(on_hand=int(view["on_hand"]), reserved=int(view["reserved"]))
    for view in orders.values():
        if view.get("status") in HOLDING:
            for line in view.get("reservations", ()):
                skus.setdefault(line["sku"], SkuFigures()).held_by_orders += _line_held(line)
    rejected_holding = []
    for key, entry in ledger.items():
        held = int(entry["granted"]) - int(entry["committed"]) - int(entry["released"])
        skus.setdefault(entry["sku"], SkuFigures()).held_by_ledger += held
        status = (orders.get(entry["order_id"]) or {}).get("status")
        if held and status not in HOLDING and status != "received":
            rejected_holding.append(f"{key} {entry['sku']}: {held} units ({status or 'no order'})")
    return Verdict(
        orders=len(published),
        statuses=statuses,
        lost=lost,
        stuck=stuck,
        unexpected=unexpected,
        skus=dict(sorted(skus.items())),
        rejected_holding=rejected_holding,
        rejected_by_reason=reasons,
        rejected_plentiful=rejected_plentiful,
    )
