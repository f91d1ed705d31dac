"""Tuning of the Python runtime for a worker's hot path: the cyclic garbage collector.

The order path allocates several small dicts and lists per order line. With Python's
default threshold (a young collection every 700 net allocations) a worker at a few
thousand orders a second runs hundreds of collections a second, and the older
generations it promotes into hold every order view of the tables, so each full
collection walks them all. None of that finds garbage: views, ledger entries and
messages are trees freed by reference counting. ``tune_garbage_collector`` freezes what
start-up built (modules, Faust's objects) out of the collector's sight and makes young
collections rarer. Measured in ``bench/orders.py``; ``CARTLOOM_GC_YOUNG_THRESHOLD=0``
keeps Python's defaults.

``cartloom sink`` and ``cartloom ingress`` call it too. A sink process decodes every
changelog record into a dict of dicts, twice (once per store); with Python's defaults it ran
15 full collections while it wrote 10,000 orders, 0.83 s of its CPU, about half of what it
spent (``bench/views.py`` with a ``gc.callbacks`` timer).
"""

from __future__ import annotations

import gc


def tune_garbage_collector(young_threshold: int) -> tuple[int, int, int]:
    """Freeze the start-up heap and set the young-generation threshold; return the thresholds.

    ``young_threshold`` 0 leaves the collector as Python configured it.
    """
    if young_threshold > 0:
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(young_threshold, gen1, gen2)
    return gc.get_threshold()
