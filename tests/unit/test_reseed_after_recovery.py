"""The timers' seed flag: raised at start and by each recovery of its table, taken once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cartloom.stream.tables import ReseedAfterRecovery


class Table:
    """Keeps the recovery callbacks, as a Faust table does, and runs them on demand."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Awaitable[None]]] = []

    def on_recover(self, fun: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self.callbacks.append(fun)
        return fun

    async def recover(self) -> None:
        for fun in self.callbacks:
            await fun()


async def test_the_first_tick_and_the_first_tick_after_each_recovery_seed() -> None:
    table = Table()
    reseed = ReseedAfterRecovery(table)  # type: ignore[arg-type]
    assert [reseed.due(), reseed.due()] == [True, False]
    await table.recover()
    await table.recover()  # two recoveries between ticks: one seed covers both
    assert [reseed.due(), reseed.due()] == [True, False]
