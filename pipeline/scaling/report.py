"""``report.md`` and ``report.html`` from a fit summary: coefficients with 95% intervals, the
frontier laws, the LR trend, the figures (by relative path: the folder is self-contained) and a
table of the runs."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from pipeline.scaling.analysis import ScalingAnalysis
from pipeline.scaling.parametric import NAMES


def _num(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.4g}"


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]"


def _law_rows(doc: dict) -> list[list[str]]:
    """(quantity, value, 95% interval) rows for every fitted coefficient; one row saying why when
    the parametric fit was skipped."""
    p = doc["parametric"]
    if "skipped" in p:
        return [["parametric L(N, D)", "skipped (see above)", "-"], *_frontier_rows(doc)]
    rows = [[f"parametric {n}", _num(p[n]["value"]), _ci(p[n]["ci95"])] for n in NAMES]
    for key, label in (("params_exponent", "N_opt ~ C^x"), ("data_exponent", "D_opt ~ C^x")):
        q = p["allocation_if_compute_prop_to_ND"][key]
        rows.append([f"parametric {label} (C ~ N D)", _num(q["value"]), _ci(q["ci95"])])
    return rows + _frontier_rows(doc)


def _frontier_rows(doc: dict) -> list[list[str]]:
    """The frontier-law and LR-trend rows of the coefficient table."""
    rows: list[list[str]] = []
    f = doc["frontier"]
    if f["law_with_E"]:
        law = f["law_with_E"]
        rows += [
            [f"frontier L = E + a C^-b: {k}", _num(law[k]), _ci(law["ci95"][k])] for k in "Eab"
        ]
    if f["law"]:
        law = f["law"]
        rows += [[f"frontier L = a C^-b: {k}", _num(law[k]), _ci(law["ci95"][k])] for k in "ab"]
    for key, label in (
        ("params_opt", "N_opt"),
        ("data_opt", "D_opt"),
        ("epochs_opt", "epochs_opt"),
    ):
        if f[key]:
            rows.append([f"frontier {label} ~ C^x", _num(f[key]["exponent"]),
                         _ci(f[key]["exponent_ci95"])])  # fmt: skip
    tr = doc["lr_trend"]
    for key, label in (("versus_compute", "C"), ("versus_epochs", "epochs")):
        if tr and tr[key]:
            rows.append([f"best LR ~ {label}^x", _num(tr[key]["exponent"]),
                         _ci(tr[key]["exponent_ci95"])])  # fmt: skip
    return rows


def _run_rows(a: ScalingAnalysis) -> tuple[list[str], list[list[str]]]:
    """Every usable run by compute: its coordinates, loss, the parametric fit there (a column only
    when there is a fit), and whether it was fitted (best LR of its point) and is on the
    frontier."""
    t = a.table
    frontier, fitted = set(a.frontier_rows.tolist()), set(a.fit_rows.tolist())
    optional = [(name, v) for name, v in (("epochs", t.epochs), ("lr", t.lr)) if v is not None]
    pred = None if a.parametric is None else a.parametric.predict(t.params, t.data)
    head = ["model", "params", *(name for name, _ in optional), "data", "compute", "loss"]
    head += [*([] if pred is None else ["fit"]), "fitted", "frontier"]
    rows = []
    for i in np.argsort(t.compute, kind="stable"):
        row = [t.models[i], _num(t.params[i]), *(_num(v[i]) for _, v in optional)]
        row += [_num(t.data[i]), _num(t.compute[i]), _num(t.loss[i])]
        row += [] if pred is None else [_num(pred[i])]
        row += ["yes" if i in fitted else "", "yes" if i in frontier else ""]
        rows.append(row)
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table>\n<tr>{th}</tr>\n{body}\n</table>"


def _notes(doc: dict) -> list[str]:
    t, b, p = doc["table"], doc["bootstrap"], doc["parametric"]
    skipped = ", ".join(f"{v} {k}" for k, v in t["skipped"].items() if v) or "none"
    if "skipped" in p:
        parametric = f"Parametric fit L(N, D) = E + A/N^alpha + B/D^beta skipped: {p['skipped']}."
    else:
        parametric = ("Parametric: L(N, D) = E + A/N^alpha + B/D^beta, Huber (delta "
                      f"{p['huber_delta']:g}) on log L, L-BFGS from a grid of starts.")  # fmt: skip
    laws = "frontier-law" if "skipped" in p else "parametric and frontier-law"
    return [
        f"Source: `{t['path']}`; {t['rows_used']} rows used ({skipped} skipped); "
        f"{t['points_fitted']} (N, D) points fitted.",
        f"Data D = `{t['data']}`; compute C = `{t['compute']}`.",
        parametric,
        f"95% intervals of the {laws} coefficients: percentiles 2.5/97.5 of "
        f"{b['samples']} row-bootstrap refits (seed {b['seed']}); of the N_opt, D_opt, epochs_opt "
        "and LR exponents: the log-log regression's t-interval.",
    ]


def _verdict(doc: dict) -> str | None:
    """The warning a reader must see first, or None for a fit without a flag."""
    r = doc.get("reliability")
    if not r or not r["unreliable"]:
        return None
    return ("Unreliable fit: " + "; ".join(r["reasons"]) + ". Read the coefficients below as a"
            " description of these runs, not as a scaling law.")  # fmt: skip


def write_reports(
    a: ScalingAnalysis,
    doc: dict,
    figures: list[tuple[str, str]],
    out: Path,
    omitted: list[str] = (),
) -> tuple[Path, Path]:
    """Write report.md and report.html into ``out``; returns their paths. `omitted`: a sentence
    per figure left out because it would carry no information."""
    laws = _law_rows(doc)
    head, runs = _run_rows(a)
    law_head = ["quantity", "value", "95% CI"]
    verdict, result = _verdict(doc), doc.get("headline", [])
    md = ["# Scaling-law fit", ""]
    md += [f"**{verdict}**", ""] if verdict else []
    md += [line for r in result for line in (r, "")]
    md += [*(f"- {n}" for n in _notes(doc)), "", "## Coefficients", ""]
    md += [_md_table(law_head, laws), "", "## Figures", ""]
    md += [f"![{cap}]({name})\n" for name, cap in figures]
    md += [f"- {o}" for o in omitted] + ([""] if omitted else [])
    md += ["## Runs", "", _md_table(head, runs), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(doc))
    imgs = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(cap)}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for name, cap in figures
    )
    top = f'<p class="verdict">{html.escape(verdict)}</p>\n' if verdict else ""
    top += "".join(f"<p>{html.escape(line)}</p>\n" for line in result)
    left_out = "".join(f"<li>{html.escape(o)}</li>" for o in omitted)
    imgs += f"\n<ul>{left_out}</ul>" if left_out else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Scaling-law fit</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
img {{ max-width: 100%; }}
.verdict {{ background: #fff3cd; border: 1px solid #d9a300; padding: 0.6em 1em; }}
</style></head>
<body>
<h1>Scaling-law fit</h1>
{top}<ul>{notes}</ul>
<h2>Coefficients</h2>
{_html_table(law_head, laws)}
<h2>Figures</h2>
{imgs}
<h2>Runs</h2>
{_html_table(head, runs)}
</body></html>
"""
    html_path = out / "report.html"
    html_path.write_text(page)
    return md_path, html_path
