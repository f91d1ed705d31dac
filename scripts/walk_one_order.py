"""Count the walk of one order through CartLoom's code: calls, modules, returns to a module left.

``docs/architecture.md#the-walk-of-one-order`` describes the path; this script measures it,
so the figure there can be checked and compared after a change:

    .venv/bin/python scripts/walk_one_order.py

It takes one valid order as the intake does (:func:`cartloom.agents.intake.accept`), then
hands the ``orders.accepted`` envelope holding it to the order agent's handler
(``OrderHandler.handle``) over in-memory table batches, with ``sys.setprofile`` recording
every call into CartLoom's own functions. Nothing is sent: the handler's writes stay in
its batch. Printed: CartLoom calls, the modules they are in, and how often the walk came
back to a module it had already left (a measure of how much a reader has to jump around).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from types import FrameType, SimpleNamespace
from typing import Any

import orjson

PACKAGE = "cartloom."


@dataclass
class Walk:
    """The CartLoom frames entered, in order, and the module each one is in."""

    calls: list[str] = field(default_factory=list)
    visits: list[str] = field(default_factory=list)  # module of the code running, on change
    _generators: set[int] = field(default_factory=set)

    def profile(self, frame: FrameType, event: str, _: Any) -> None:
        """``sys.setprofile``'s hook: note CartLoom calls and each change of module."""
        module = frame.f_globals.get("__name__", "")
        resumed = event == "call" and _resumes_a_generator(frame, self._generators)
        if event == "call" and module.startswith(PACKAGE) and not resumed:
            self.calls.append(f"{module}.{frame.f_code.co_qualname}")
        if event in ("call", "return"):
            here = module if event == "call" else _caller_module(frame)
            if here.startswith(PACKAGE) and (not self.visits or self.visits[-1] != here):
                self.visits.append(here)

    def returns_to_a_module_left(self) -> int:
        """How often the walk entered a module it had been in before and left."""
        seen: set[str] = set()
        again = 0
        for module in self.visits:
            again += module in seen
            seen.add(module)
        return again


def _resumes_a_generator(frame: FrameType, seen: set[int]) -> bool:
    """Whether a "call" event is a generator taking up again (one call, many resumes)."""
    if not frame.f_code.co_flags & inspect.CO_GENERATOR:
        return False
    resumed = id(frame) in seen
    seen.add(id(frame))
    return resumed


def _caller_module(frame: FrameType) -> str:
    caller = frame.f_back
    return "" if caller is None else str(caller.f_globals.get("__name__", ""))


def walk_one_order() -> Walk:
    """Trace one order from the intake's ``accept`` through ``OrderHandler.handle``.

    Another order goes the same way first, untraced, as orders before it would in a running
    worker: what is computed once per process (topic facts, cached lookups) is not counted.
    """
    from cartloom.domain.orders import ORDER_MESSAGE

    example = ORDER_MESSAGE.examples[0]  # the published example of an order (two lines)
    take_order({**example, "order_id": "walk-warm-up"}, None)
    walk = Walk()
    take_order({**example, "order_id": "walk-1"}, walk)
    return walk


def take_order(order: dict[str, Any], walk: Walk | None) -> None:
    """One order through the intake and the order agent's handler, traced into ``walk``."""
    from cartloom.agents.intake import accept
    from cartloom.agents.orders import OrderHandler
    from cartloom.stream.app import app, settings
    from cartloom.stream.batching import Outbox, TableBatch
    from cartloom.stream.tables import early_events_by_order, order_by_id

    app.finalize()
    record = SimpleNamespace(key=order["order_id"].encode(), value=orjson.dumps(order))
    # The envelope's partition, as the intake chose it: where the order's id lands.
    partitions = order_by_id.partitions or app.conf.topic_partitions
    partition = _partition_of(order["order_id"], partitions)
    message = SimpleNamespace(
        topic=settings.topic_name("orders.accepted"),
        partition=partition,
        offset=0,
        key=record.key,
        headers=[],
    )
    producer = SimpleNamespace()
    handler = OrderHandler(
        TableBatch(order_by_id, producer),
        Outbox(producer),
        TableBatch(early_events_by_order, producer),
    )
    if walk is not None:
        sys.setprofile(walk.profile)
    try:
        order_id, encoded = accept(record)  # type: ignore[arg-type]
        message.value = b'{"orders":[' + encoded + b"]}"
        event = SimpleNamespace(message=message, value=message.value, key=message.key)
        handler.handle(event)  # type: ignore[arg-type]
    finally:
        sys.setprofile(None)
    if handler.failed_items or handler.orders.get(order_id) is None:
        raise SystemExit(f"the order was not taken: {handler.failed_items}")


def _partition_of(key: str, partitions: int) -> int:
    from cartloom.core.partitioning import key_partition

    return key_partition(key.encode(), partitions)


def figures(walk: Walk) -> dict[str, int]:
    """The walk's length, by the four measures docs/architecture.md gives."""
    return {
        "CartLoom calls": len(walk.calls),
        "modules": len(set(walk.visits)),
        "steps from one module to another": len(walk.visits) - 1,
        "returns to a module already left": walk.returns_to_a_module_left(),
    }


def markdown(walk: Walk) -> str:
    """The figures as the table in docs/architecture.md."""
    rows = [f"| {name} | {value} |" for name, value in figures(walk).items()]
    return "\n".join(["| measure | one order |", "| --- | ---: |", *rows])


def main() -> None:
    """Print the walk's figures (``--markdown``: as the docs' table) and its modules."""
    walk = walk_one_order()
    if "--markdown" in sys.argv[1:]:
        print(markdown(walk))
        return
    for name, value in figures(walk).items():
        print(f"{name}: {value}")
    print("path:", " > ".join(walk.visits))


if __name__ == "__main__":
    main()
