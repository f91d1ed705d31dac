"""How many cases each fuzz test runs: ``FUZZ_CASES`` (``make fuzz``: 10,000), else a short form.

The short form runs in ``make test`` (and so in CI); ``make fuzz`` runs the same tests at
full size. Hypothesis' database is off for them: a fuzz run is a fresh search each time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Cases per fuzzed surface.
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "300"))

#: The Hypothesis settings of every fuzz test.
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
