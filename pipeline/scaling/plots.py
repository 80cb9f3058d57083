"""The report's figures (PNG). Built on ``matplotlib.figure.Figure`` with the Agg canvas, never
pyplot, so no global backend state changes inside a caller's process (a training driver, Ray)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pipeline.scaling.analysis import ScalingAnalysis
from pipeline.scaling.powerlaw import PowerLaw

MAX_LEGEND_MODELS = 10  # more models than this: colour by N with a colour bar instead


def _figure(panels: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * panels, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    """Log axes spanning under two decades get 1-2-5 (under 3x: 1..9) ticks in plain numbers: the
    default labels every minor tick there in scientific notation, which overlaps; wider ones
    are labelled at decades only (the default also labels minor ticks up to a few decades:
    "8e+19e+10e+11"). A log axis over
    one value (e.g. N of a one-model frontier) gets a factor 1.5 either side: matplotlib's own
    margin there is float noise, and its ticks then swamp the layout."""
    for ax in fig.axes:
        for axis, set_lim in ((ax.xaxis, ax.set_xlim), (ax.yaxis, ax.set_ylim)):
            lim = axis.get_view_interval()
            span = max(lim) / min(lim) if min(lim) > 0 else np.inf
            if axis.get_scale() == "log" and span < 1.0 + 1e-6:
                set_lim(min(lim) / 1.5, max(lim) * 1.5)
                span = 1.5**2
            if axis.get_scale() == "log" and span < 100:
                subs = np.arange(1.0, 10.0) if span < 3 else (1.0, 2.0, 5.0)  # 1..9 crowd past 3x
                axis.set_major_locator(LogLocator(subs=subs))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
                axis.set_minor_formatter(NullFormatter())
            elif (
                axis.get_scale() == "log"
            ):  # decades only: labelled minor ticks crowd a few decades
                axis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=110)


def _models(a: ScalingAnalysis) -> list[tuple[str, np.ndarray, float]]:
    """(name, rows of fit_rows, N) per model, smallest N first."""
    t, rows = a.table, a.fit_rows
    names = sorted({t.models[i] for i in rows}, key=lambda m: min(
        t.params[i] for i in rows if t.models[i] == m))  # fmt: skip
    out = []
    for name in names:
        mine = np.array([i for i in rows if t.models[i] == name])
        out.append((name, mine, float(np.median(t.params[mine]))))
    return out


def _colours(fig: Figure, ax: Axes, models: list) -> tuple[list, bool]:
    """A colour per model by log N; a legend when few models, else a colour bar."""
    sizes = np.array([m[2] for m in models])
    norm = LogNorm(sizes.min(), max(sizes.max(), sizes.min() * 1.0001))
    # viridis without its pale-yellow top, which a thin line on white hides
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
    legend = len(models) <= MAX_LEGEND_MODELS
    if not legend:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="params N")
    return [cmap(norm(s)) for s in sizes], legend


def plot_loss_vs_compute(a: ScalingAnalysis, path: Path) -> None:
    """One curve per model across budgets, the frontier, and the frontier laws with 95% bands."""
    fig, (ax,) = _figure()
    t = a.table
    models = _models(a)
    colours, legend = _colours(fig, ax, models)
    for (name, rows, _), colour in zip(models, colours, strict=True):
        order = rows[np.argsort(t.compute[rows])]
        ax.plot(t.compute[order], t.loss[order], "o-", ms=3, lw=0.8, color=colour,
                label=name if legend else None)  # fmt: skip
    fr = a.frontier_rows
    ax.plot(t.compute[fr], t.loss[fr], "s", ms=6, mfc="none", mec="k", label="frontier")
    grid, boot = a.compute_grid, a.frontier_boot
    for law, key, style, label in (
        (a.frontier.saturating, "curve", "-", "E + a C^-b"),
        (a.frontier.pure, "curve_pure", "--", "a C^-b"),
    ):
        if law is None:
            continue
        ax.plot(grid, law(grid), style, color="crimson", lw=1.5, label=label)
        curves = boot.get(key)
        if curves is not None and len(curves) >= 2:
            lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
            ax.fill_between(grid, lo, hi, color="crimson", alpha=0.15, lw=0)
    # The runs set the view: a band from degenerate resamples would otherwise squash them flat.
    shown = t.loss[np.concatenate([m[1] for m in models])]
    ax.set_ylim(shown.min() / 1.08, shown.max() * 1.08)
    ax.set_xlabel(f"compute C ({t.compute_source})")
    ax.set_ylabel("held-out loss")
    ax.set_title("loss vs compute: runs, frontier, fitted laws (95% bootstrap band)")
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_parametric(a: ScalingAnalysis, path: Path) -> None:
    """Loss vs data per model with the Approach-3 surface through it; predicted vs observed.
    Nothing is written when the parametric fit was skipped."""
    t, fit = a.table, a.parametric
    if fit is None:
        return
    fig, (ax, ax2) = _figure(2)
    models = _models(a)
    colours, legend = _colours(fig, ax, models)
    step = max(1, len(models) // MAX_LEGEND_MODELS)
    for k, ((name, rows, n), colour) in enumerate(zip(models, colours, strict=True)):
        ax.plot(t.data[rows], t.loss[rows], "o", ms=3, color=colour,
                label=name if legend else None)  # fmt: skip
        if k % step == 0:  # too many models: draw the surface through a spread of them
            d = np.geomspace(t.data[rows].min(), t.data[rows].max(), 32)
            ax.plot(d, fit.predict(np.full_like(d, n), d), "-", lw=0.8, color=colour)
    ax.set_xlabel(f"data D ({t.data_source})")
    ax.set_ylabel("held-out loss")
    ax.set_title("L(N, D) = E + A/N^alpha + B/D^beta")
    if legend:
        ax.legend(fontsize="small")
    rows = a.fit_rows
    pred = fit.predict(t.params[rows], t.data[rows])
    ax2.set_xscale("linear")  # losses span well under a decade: log ticks would crowd
    ax2.set_yscale("linear")
    ax2.plot(t.loss[rows], pred, "o", ms=3, color="steelblue")
    lims = [min(pred.min(), t.loss[rows].min()), max(pred.max(), t.loss[rows].max())]
    ax2.plot(lims, lims, "k--", lw=0.8)
    ax2.set_xlabel("observed loss")
    ax2.set_ylabel("fitted loss")
    ax2.set_title("fit vs observation")
    _save(fig, path)


def _trend(
    ax: Axes, x: np.ndarray, y: np.ndarray, law: PowerLaw | None, points: str, name: str, xname: str
) -> None:
    ax.plot(x, y, "o", color="k", ms=4, label=points)
    if law is not None:
        grid = np.geomspace(x.min(), x.max(), 32)
        ax.plot(grid, law(grid), "-", color="crimson", label=f"{name} ~ {xname}^{law.exponent:.3f}")
    ax.legend(fontsize="small")


def plot_optimal(a: ScalingAnalysis, path: Path) -> list[str]:
    """Compute-optimal model size and epoch (or data) budget versus compute; a panel whose
    frontier runs share one value is left out (a sentence says why). Returns those sentences;
    nothing is written when both are left out."""
    t, f, rows = a.table, a.frontier, a.frontier_rows
    c = t.compute[rows]
    budget = ("epochs_opt", "epoch budget of the frontier run", t.epochs, f.epochs_opt)
    if t.epochs is None:
        budget = ("D_opt", f"data D of the frontier run ({t.data_source})", t.data, f.data_opt)
    panels, omitted = [], []
    for name, label, values, law in (("N_opt", "params N of the frontier run", t.params,
                                      f.params_opt), budget):  # fmt: skip
        y = values[rows]
        if np.unique(y).size < 2:
            omitted.append(f"No {name} trend: every frontier run has {label.split(' of ')[0]}"
                           f" {y[0]:.4g}.")  # fmt: skip
        else:
            panels.append((name, label, y, law))
    if not panels:
        return omitted
    fig, axes = _figure(len(panels))
    for ax, (name, label, y, law) in zip(axes, panels, strict=True):
        _trend(ax, c, y, law, "frontier runs", name, "C")
        ax.set_xlabel("compute C")
        ax.set_ylabel(label)
    _save(fig, path)
    return omitted


def plot_lr(a: ScalingAnalysis, path: Path) -> None:
    """Best LR per (model, budget) versus compute, and versus epoch budget when known."""
    tr = a.lr_trend
    if tr is None:
        return
    fig, axes = _figure(2 if tr.epochs is not None else 1)
    _trend(axes[0], tr.compute, tr.lr, tr.versus_compute, "best LR per point", "LR", "C")
    axes[0].set_xlabel("compute C")
    axes[0].set_ylabel("best LR")
    if tr.epochs is not None:
        _trend(axes[1], tr.epochs, tr.lr, tr.versus_epochs, "best LR per point", "LR", "epochs")
        axes[1].set_xlabel("epoch budget")
        axes[1].set_ylabel("best LR")
    _save(fig, path)


def write_figures(a: ScalingAnalysis, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The figures that carry information, as (file name, caption), and a sentence for each one
    left out."""
    figures, omitted = [("loss_vs_compute.png", "Held-out loss vs compute")], []
    plot_loss_vs_compute(a, out / "loss_vs_compute.png")
    if a.parametric is not None:
        plot_parametric(a, out / "parametric.png")
        figures.append(("parametric.png", "Approach-3 parametric fit"))
    else:
        omitted.append(f"No Approach-3 figure: {a.parametric_skipped}.")
    left_out = plot_optimal(a, out / "optimal.png")
    omitted += left_out
    if len(left_out) < 2:  # one of its two panels at least
        figures.append(("optimal.png", "Compute-optimal model size and budget"))
    if a.lr_trend is not None:
        plot_lr(a, out / "lr.png")
        figures.append(("lr.png", "Best learning rate vs budget"))
    elif a.table.lr is not None:
        lrs = np.unique(a.table.lr)
        omitted.append(f"No learning-rate figure: every run used one learning rate ({lrs[0]:.4g}).")
    return figures, omitted
