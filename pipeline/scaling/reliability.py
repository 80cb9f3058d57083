"""What a reader should take from a fit, in words, and whether to trust it (``fit.json``'s
``reliability``, the sentences at the top of report.md/html).

A fit is flagged unreliable, each reason one sentence, when:
- too few points per axis: under 3 model sizes or 3 budgets (an exponent from 2 values is a
  line through 2 points), or no parametric fit at all;
- a parametric coefficient sits at a bound: E ~ 0 (no floor under the loss), an exponent
  outside (0.02, 3), A or B beyond 1e12 (one term diverging to make up for another);
- a 95% interval is wider than the value it brackets (or missing from the bootstrap);
- the frontier does not fall: its law's exponent is not positive, or the loss at the frontier's
  highest compute is not below the loss at its lowest; its saturating law's E is ~0, or the
  compute-optimal size or budget exponent's interval is wider than the exponent.
"""

from __future__ import annotations

import math

MIN_VALUES_PER_AXIS = 3
EXPONENT_RANGE = (0.02, 3.0)
COEF_LIMIT = 1e12
E_FLOOR_SHARE = 0.01  # E below 1% of the lowest loss: the fit put no floor under it


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _wide(name: str, q: dict | None) -> str | None:
    """A sentence when the value's 95% interval is missing or wider than the value."""
    if q is None:
        return None
    value, ci = q.get("value"), q.get("ci95")
    if value is None:
        return f"{name} could not be fitted"
    if not ci:
        return None  # no bootstrap asked for: nothing to judge
    if ci[0] is None or ci[1] is None or ci[1] - ci[0] > abs(value):
        lo, hi = ("?" if v is None else _fmt(v) for v in ci)
        return f"{name}'s 95% interval [{lo}, {hi}] is wider than its value {_fmt(value)}"
    return None


def _parametric_reasons(doc: dict, lowest_loss: float) -> list[str]:
    p = doc["parametric"]
    if "skipped" in p:
        return [f"no parametric fit: {p['skipped']}"]
    out = []
    floor, A, B = (p[k]["value"] for k in ("E", "A", "B"))
    if floor is not None and floor < E_FLOOR_SHARE * lowest_loss:
        out.append(f"E = {_fmt(floor)} is at its bound 0: the fit put no floor under the loss")
    for name in ("alpha", "beta"):
        v = p[name]["value"]
        if v is not None and not EXPONENT_RANGE[0] < v < EXPONENT_RANGE[1]:
            out.append(f"{name} = {_fmt(v)} is outside the plausible {EXPONENT_RANGE}")
    for name, v in (("A", A), ("B", B)):
        if v is not None and v > COEF_LIMIT:
            out.append(f"{name} = {_fmt(v)} diverges (beyond {COEF_LIMIT:g})")
    for name in ("E", "alpha", "beta"):
        wide = _wide(f"parametric {name}", p[name])
        if wide:
            out.append(wide)
    return out


def _frontier_reasons(doc: dict) -> list[str]:
    f = doc["frontier"]
    runs = f["runs"]
    out = []
    if len(runs) >= 2 and runs[-1]["loss"] >= runs[0]["loss"]:
        out.append(
            f"the frontier does not fall: loss {_fmt(runs[-1]['loss'])} at its highest compute"
            f" against {_fmt(runs[0]['loss'])} at its lowest"
        )
    saturating = f["law_with_E"]
    if saturating is not None and saturating["E"] is not None and runs:
        lowest = min(r["loss"] for r in runs)
        if saturating["E"] < E_FLOOR_SHARE * lowest:
            out.append(f"the frontier law's E = {_fmt(saturating['E'])} is at its bound 0")
    for key, what in (("params_opt", "model size"), ("epochs_opt", "epoch budget")):
        trend = f.get(key)
        if trend is not None and trend["exponent"] is not None:
            wide = _wide(f"the compute-optimal {what}'s exponent",
                         {"value": trend["exponent"], "ci95": trend["exponent_ci95"]})  # fmt: skip
            if wide:
                out.append(wide)
    if len({r["params"] for r in runs}) == 1 and len(runs) > 1:
        out.append(f"every frontier point has one model size ({_fmt(runs[0]['params'])}): the"
                   " compute-optimal size cannot be fitted")  # fmt: skip
    law = f["law"]
    if law is None:
        out.append(f"no frontier law: {len(runs)} frontier point(s)")
    elif law["b"] is None or law["b"] <= 0:
        out.append("the frontier law's exponent is not positive: the loss does not fall with C")
    else:
        ci = law.get("ci95", {}).get("b")
        wide = _wide("the frontier exponent b", {"value": law["b"], "ci95": ci})
        if wide:
            out.append(wide)
    return out


def assess(doc: dict, models: int, budgets: int, lowest_loss: float) -> dict:
    """``{"unreliable": bool, "reasons": [sentence, ...]}`` for a fit.json document whose points
    span `models` model sizes and `budgets` budgets."""
    reasons = []
    for count, axis in ((models, "model size"), (budgets, "budget")):
        if count < MIN_VALUES_PER_AXIS:
            reasons.append(f"{count} {axis}{'' if count == 1 else 's'}: too few to fit an"
                           " exponent on (3 or more needed)")  # fmt: skip
    reasons += _parametric_reasons(doc, lowest_loss)
    reasons += _frontier_reasons(doc)
    return {"unreliable": bool(reasons), "reasons": reasons}


def headline(doc: dict) -> list[str]:
    """The result in words: the frontier law with its interval over how many decades, the
    compute-optimal size and budget trends, and how many points carry them."""
    f, t = doc["frontier"], doc["table"]
    runs = f["runs"]
    lines = []
    if runs:
        decades = math.log10(runs[-1]["compute"] / runs[0]["compute"]) if len(runs) > 1 else 0.0
        law = f["law"]
        if law is not None and law["b"] is not None:
            ci = law.get("ci95", {}).get("b")
            band = (
                f" (95% interval [{_fmt(ci[0])}, {_fmt(ci[1])}])" if ci and None not in ci else ""
            )
            lines.append(
                f"Held-out loss on the compute-optimal frontier falls as C^-{_fmt(law['b'])}{band}"
                f" over {decades:.1f} decades of compute, carried by {len(runs)} frontier points"
                f" of {t['points_fitted']} fitted."
            )
        else:
            lines.append(f"{len(runs)} frontier point(s) over {decades:.1f} decades of compute.")
    budget = (
        ("epochs_opt", "epoch budget", "epochs")
        if f.get("epochs_opt")
        else ("data_opt", "data", "data")
    )
    for key, what, field in (("params_opt", "model size", "params"), budget):
        law = f.get(key)
        if len({r.get(field) for r in runs}) == 1:
            lines.append(f"Every frontier point has one {what} ({_fmt(runs[0][field])}): no trend.")
        elif law is not None and law["exponent"] is not None:
            ci = law["exponent_ci95"]
            band = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and None not in ci else ""
            lines.append(f"Compute-optimal {what} grows as C^{_fmt(law['exponent'])}{band}.")
    p = doc["parametric"]
    if "skipped" not in p:
        coef = ", ".join(f"{k} {_fmt(p[k]['value'])}" for k in ("E", "alpha", "beta"))
        lines.append(f"Approach 3 on {p['points']} points: {coef}.")
    return lines
