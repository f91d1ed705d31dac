"""Shared test configuration: nothing here starts a server (see tests/integration/conftest.py)."""

from __future__ import annotations

import os

# The unit tests import cartloom.app, which reads settings once; keep them independent of
# whatever CARTLOOM_* variables the developer's shell happens to hold.
for _name in [n for n in os.environ if n.startswith("CARTLOOM_")]:
    del os.environ[_name]
