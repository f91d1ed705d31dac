import gc
from collections.abc import Iterator

import pytest

from cartloom.core.runtime import tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_zero_keeps_pythons_collector() -> None:
    before = gc.get_threshold()
    assert tune_garbage_collector(0) == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored_collector")
def test_threshold_makes_young_collections_rarer_and_freezes_the_start_up_heap() -> None:
    _, gen1, gen2 = gc.get_threshold()
    assert tune_garbage_collector(50_000) == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 0
