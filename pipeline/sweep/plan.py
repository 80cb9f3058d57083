"""Which points a sweep runs, and when.

`Grid`: every model x epoch budget x LR multiplier, all ready at once.
`LrSearch`: per (model, budget) cell two trials, the best multiplier of the cell before it and
half of that (the paper: the optimal LR falls slowly and monotonically with model size and
budget, so two trials per point suffice). Cells run in order of budget within a model and
model after model; a cell is ready once every trial of the cell before it has an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.sweep.results import PointResult


@dataclass(frozen=True)
class Point:
    model: str
    epochs: float
    lr_multiplier: float

    @property
    def name(self) -> str:
        return f"{self.model}-e{self.epochs:g}-lr{self.lr_multiplier:g}"


class Grid:
    def __init__(self, models: list[str], epochs: list[float], multipliers: list[float]) -> None:
        self.points = [Point(m, e, x) for m in models for e in sorted(epochs) for x in multipliers]
        self._given = False

    def ready(self, outcomes: dict[str, PointResult]) -> list[Point]:
        """Points not handed out before; `outcomes` maps point name -> its latest row."""
        if self._given:
            return []
        self._given = True
        return list(self.points)


class LrSearch:
    def __init__(self, models: list[str], epochs: list[float], start: float) -> None:
        self.cells = [(m, e) for m in models for e in sorted(epochs)]
        self.start = start
        self.trials: dict[tuple[str, float], list[Point]] = {}

    def _previous(self, i: int) -> tuple[str, float] | None:
        model, _ = self.cells[i]
        if i == 0:
            return None
        before = self.cells[i - 1]
        # A model's first budget follows the previous model's first budget.
        return before if before[0] == model else next(c for c in self.cells if c[0] == before[0])

    def best(self, cell: tuple[str, float], outcomes: dict[str, PointResult]) -> float | None:
        """The multiplier with the lowest held-out loss among the cell's finished trials."""
        found = [(outcomes[p.name], p.lr_multiplier) for p in self.trials.get(cell, [])
                 if p.name in outcomes]  # fmt: skip
        done = [(o.heldout_loss, x) for o, x in found if o.finished and o.heldout_loss is not None]
        return min(done)[1] if done else None

    def ready(self, outcomes: dict[str, PointResult]) -> list[Point]:
        new: list[Point] = []
        for i, cell in enumerate(self.cells):
            if cell in self.trials:
                continue
            prev = self._previous(i)
            if prev is None:
                start = self.start
            elif prev not in self.trials or any(p.name not in outcomes for p in self.trials[prev]):
                continue  # the cell before has trials still running (or not yet started)
            else:
                before = self.trials[prev][0].lr_multiplier
                start = self.best(prev, outcomes) or before
            self.trials[cell] = [Point(*cell, start), Point(*cell, start / 2)]
            new += self.trials[cell]
        return new
