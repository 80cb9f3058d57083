"""Every fit on one results table, and its JSON summary (``fit.json``).

When the table has an lr column, its rows are LR trials: each (N, D) point keeps its best trial
for the parametric and frontier fits (a mistuned trial is not a point on the loss surface), and
the best LRs get their own trend fit.

Too few points for the parametric fit (fewer than ``MIN_ROWS``, or under 2 model or data sizes):
it and its bootstrap are skipped, with the reason in ``parametric_skipped``; the frontier, the LR
trend and the runs are still reported. Only fewer than 2 points leave nothing to report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import UserError
from pipeline.scaling.bootstrap import CI_PERCENTILES, Bootstrap, bootstrap_parametric
from pipeline.scaling.frontier import FrontierFit, bootstrap_frontier, fit_frontier
from pipeline.scaling.lr_trend import LrTrend, best_per_point, fit_lr_trend
from pipeline.scaling.parametric import HUBER_DELTA, NAMES, ParametricFit, fit_parametric
from pipeline.scaling.reliability import assess, headline
from pipeline.scaling.table import RunTable

MIN_ROWS = len(NAMES) + 1  # the parametric fit's 5 coefficients, plus one
MIN_REPORT_ROWS = 2  # fewer: no frontier, no trend, nothing to report


@dataclass
class ScalingAnalysis:
    table: RunTable  # every usable row
    fit_rows: np.ndarray  # rows the fits use (best LR per point when there is an lr column)
    parametric: ParametricFit | None  # None: skipped, see parametric_skipped
    bootstrap: Bootstrap | None
    frontier: FrontierFit  # its index points into fit_rows
    frontier_boot: dict[str, np.ndarray]
    compute_grid: np.ndarray  # where the frontier laws' bands are evaluated
    lr_trend: LrTrend | None
    seed: int = 0
    parametric_skipped: str | None = None  # why there is no parametric fit
    n_boot: int = 0  # bootstrap resamples asked for

    @property
    def frontier_rows(self) -> np.ndarray:
        """The frontier as rows of ``table``."""
        return self.fit_rows[self.frontier.index]


def _check_reportable(table: RunTable, rows: np.ndarray) -> None:
    if rows.size < MIN_REPORT_ROWS:
        raise UserError(
            f"{table.path}: {rows.size} usable (N, D) point(s); a scaling report needs at least "
            f"{MIN_REPORT_ROWS} (finished rows with a finite loss)"
        )


def parametric_skip_reason(params: np.ndarray, data: np.ndarray) -> str | None:
    """Why Approach 3 cannot be fitted on these points (one sentence), or None when it can."""
    points, sizes, budgets = params.size, np.unique(params).size, np.unique(data).size
    if points >= MIN_ROWS and sizes >= 2 and budgets >= 2:
        return None
    return (
        f"{points} usable (N, D) point(s) spanning {sizes} model size(s) and {budgets} data "
        f"size(s); the parametric fit needs at least {MIN_ROWS} points and 2+ of each"
    )


def analyse(table: RunTable, *, n_boot: int = 200, seed: int = 0) -> ScalingAnalysis:
    """Parametric fit + bootstrap (when the points allow), frontier + laws + bootstrap bands, and
    the LR trend."""
    if n_boot < 0:
        raise UserError(f"bootstrap={n_boot}; expected a count >= 0")
    has_lr = table.lr is not None
    rows = best_per_point(table.params, table.data, table.loss) if has_lr else np.arange(len(table))
    rows = np.sort(rows)
    _check_reportable(table, rows)
    n, d, c, loss = (a[rows] for a in (table.params, table.data, table.compute, table.loss))
    skipped = parametric_skip_reason(n, d)
    fit = boot = None
    if skipped is None:
        fit = fit_parametric(n, d, loss)
        boot = bootstrap_parametric(n, d, loss, fit, n_boot=n_boot, seed=seed) if n_boot else None
    epochs = None if table.epochs is None else table.epochs[rows]
    frontier = fit_frontier(c, loss, n, d, epochs)
    grid = np.geomspace(c.min(), c.max(), 64)
    fboot = bootstrap_frontier(c, loss, n, d, grid, n_boot=n_boot, seed=seed) if n_boot else {}
    trend = None
    if has_lr and np.unique(table.lr).size > 1:  # one LR everywhere: no trend to fit
        trend = fit_lr_trend(
            table.params, table.data, table.compute, table.loss, table.lr, table.epochs
        )
    return ScalingAnalysis(
        table, rows, fit, boot, frontier, fboot, grid, trend, seed, skipped, n_boot
    )


def _ci(samples: np.ndarray | None, asked: int = 0) -> list[float] | None:
    """Percentile interval; None without samples, or when fewer than half of the `asked`
    resamples gave a fit (the few that did would pass for a certainty the data lacks)."""
    if samples is None or samples.size == 0 or samples.size < asked / 2:
        return None
    lo, hi = np.percentile(samples, CI_PERCENTILES)
    return [float(lo), float(hi)]


def _parametric_dict(a: ScalingAnalysis) -> dict:
    fit, boot = a.parametric, a.bootstrap
    if fit is None:
        return {"skipped": a.parametric_skipped}
    out: dict = {}
    for i, name in enumerate(NAMES):
        col = None if boot is None else boot.samples[:, i]
        out[name] = {"value": getattr(fit, name), "ci95": _ci(col)}
    # With C proportional to N * D, minimising L at fixed C gives N_opt ~ C^(beta/(alpha+beta)).
    alpha, beta = fit.alpha, fit.beta
    s = None if boot is None else boot.samples
    out["allocation_if_compute_prop_to_ND"] = {
        "params_exponent": {
            "value": beta / (alpha + beta),
            "ci95": None if s is None else _ci(s[:, 4] / (s[:, 3] + s[:, 4])),
        },
        "data_exponent": {
            "value": alpha / (alpha + beta),
            "ci95": None if s is None else _ci(s[:, 3] / (s[:, 3] + s[:, 4])),
        },
    }
    out["huber_delta"] = HUBER_DELTA
    out["huber_objective"] = fit.objective
    out["points"] = fit.rows
    out["bootstrap_samples"] = 0 if boot is None else int(boot.samples.shape[0])
    return out


def _frontier_dict(a: ScalingAnalysis) -> dict:
    out = a.frontier.to_dict()
    b = a.frontier_boot
    if out["law_with_E"] is not None:
        out["law_with_E"]["ci95"] = {k: _ci(b.get(k), a.n_boot) for k in ("E", "a", "b")}
    if out["law"] is not None:
        out["law"]["ci95"] = {"a": _ci(b.get("a_pure"), a.n_boot),
                                   "b": _ci(b.get("b_pure"), a.n_boot)}  # fmt: skip
    t, rows = a.table, a.frontier_rows
    out["runs"] = [
        {
            "model": t.models[i],
            "params": float(t.params[i]),
            "data": float(t.data[i]),
            "compute": float(t.compute[i]),
            "loss": float(t.loss[i]),
            **({} if t.epochs is None else {"epochs": float(t.epochs[i])}),
            **({} if t.lr is None else {"lr": float(t.lr[i])}),
        }
        for i in rows
    ]
    return out


def summary(a: ScalingAnalysis) -> dict:
    """The ``fit.json`` document."""
    t = a.table
    return {
        "table": {
            "path": t.path,
            "rows_used": len(t),
            "points_fitted": int(a.fit_rows.size),
            "skipped": t.skipped,
            "data": t.data_source,
            "compute": t.compute_source,
        },
        "bootstrap": {
            "samples": a.n_boot,
            "seed": a.seed,
        },
        "parametric": _parametric_dict(a),
        "frontier": _frontier_dict(a),
        "lr_trend": None if a.lr_trend is None else a.lr_trend.to_dict(),
    }


def assess_fit(a: ScalingAnalysis, doc: dict) -> dict:
    """fit.json's ``reliability`` and ``headline`` for `doc` (the JSON-safe ``summary(a)``)."""
    t, rows = a.table, a.fit_rows
    budgets = t.epochs[rows] if t.epochs is not None else t.data[rows]
    models, budgets = np.unique(t.params[rows]).size, np.unique(budgets).size
    reliability = assess(doc, models, budgets, float(t.loss[rows].min()))
    return {"reliability": reliability, "headline": headline(doc)}
