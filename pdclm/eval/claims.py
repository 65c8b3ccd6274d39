"""The claims table: each design claim beside the number that tests it and a verdict.

A row is ``{claim, measure, pdclm, baseline, ratio, verdict, source}``; the verdict is one of
:data:`VERDICTS` and follows from the numbers by a rule stated in the row's ``measure``.
Rows come from two places:

- benchmark JSONs (``pdclm bench ...``, saved under ``bench.results_dir``) that carry a
  ``"claims"`` list (and a ``"goals"`` list: the issue's targets, same row shape);
- the run's own measurements (Phase 3's robustness to perturbed wording), so ``pdclm run``
  writes the table without training any baseline itself.

A claim with no measurement anywhere gets a row saying so, with no figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

VERDICTS = ("holds", "does not hold", "not measurable at this size")

RUN_SOURCE = "this run"
"""How a row measured by the run itself names its source (it then says which measurement)."""

CLAIMS = {
    "speed": "No tokenizer: 15-25 % faster training",
    "memory": "Pattern stream: ~10 % less memory",
    "robustness": "Self-reflection: ~30 % more robust reasoning",
    "human": "Several rewards: less human evaluation",
}
"""The design's four efficiency claims, by key, in table order."""


def row(
    claim: str,
    measure: str,
    pdclm: float | None,
    baseline: float | None,
    verdict: str,
    source: str,
    ratio: float | None = None,
) -> dict[str, Any]:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}; got {verdict!r}")
    if ratio is None and pdclm is not None and baseline:
        ratio = pdclm / baseline
    return {
        "claim": claim,
        "measure": measure,
        "pdclm": pdclm,
        "baseline": baseline,
        "ratio": ratio,
        "verdict": verdict,
        "source": source,
    }


def threshold_verdict(ratio: float | None, target: float, higher_is_better: bool) -> str:
    """``holds`` when the ratio reaches the target in the claimed direction."""
    if ratio is None or not math.isfinite(ratio):
        return "not measurable at this size"
    ok = ratio >= target if higher_is_better else ratio <= target
    return "holds" if ok else "does not hold"


def two_proportion_z(right_a: int, n_a: int, right_b: int, n_b: int) -> float:
    """z statistic of the difference between two accuracies (pooled standard error)."""
    if not n_a or not n_b:
        return 0.0
    p = (right_a + right_b) / (n_a + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
    return 0.0 if se == 0 else (right_a / n_a - right_b / n_b) / se


def robustness_row(robustness: dict[str, Any], source: str) -> dict[str, Any]:
    """Phase 3: accuracy kept under perturbed wording, with reflect-and-revise against
    without. The claim holds when reflection keeps >= 1.3x as much *and* its perturbed
    accuracy is higher than answering directly by a margin a two-proportion z test finds
    (|z| >= 1.96); a difference inside the noise of the item count is not measurable."""
    n = int(robustness.get("items") or 0)
    plain, refl = robustness.get("plain", {}), robustness.get("reflect", {})
    kept_plain, kept_refl = plain.get("retained"), refl.get("retained")
    measure = (
        "share of clean accuracy kept on perturbed wording, reflect-and-revise vs answering "
        f"directly ({n} held-out questions); holds at >= 1.3x with a significant gain in "
        "perturbed accuracy (|z| >= 1.96)"
    )
    ratio = kept_refl / kept_plain if kept_refl is not None and kept_plain else None
    z = two_proportion_z(
        round(refl.get("perturbed", 0.0) * n), n, round(plain.get("perturbed", 0.0) * n), n
    )
    if ratio is None or abs(z) < 1.96:
        verdict = "not measurable at this size"
    else:
        verdict = "holds" if ratio >= 1.3 and z > 0 else "does not hold"
    return row(CLAIMS["robustness"], measure, kept_refl, kept_plain, verdict, source, ratio)


def run_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from a run's own results (``report.json`` sections)."""
    rows = []
    p3 = report.get("phase3")
    if isinstance(p3, dict) and p3.get("robustness"):
        rows.append(robustness_row(p3["robustness"], f"{RUN_SOURCE} (Phase 3 robustness)"))
    return rows


def bench_rows(results_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Claim and goal rows of every benchmark JSON in ``results_dir``, each labelled with
    the file it came from."""
    claims, goals = [], []
    folder = Path(results_dir)
    if not folder.is_dir():
        return claims, goals
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or path.stem.startswith("claims"):
            continue
        if isinstance(data.get("run"), dict) and "config" in data:
            # a saved run report: its own measurements, not the rows it collected
            for r in run_rows(data):
                claims.append({**r, "source": f"{path.as_posix()} (saved run report)"})
            continue
        when = f", {data['finished']}" if data.get("finished") else ""
        for key, out in (("claims", claims), ("goals", goals)):
            for r in data.get(key) or []:
                out.append({**r, "source": f"{path.as_posix()} ({r.get('source', '')}{when})"})
    return claims, goals


def collect(report: dict[str, Any] | None, results_dir: str | Path | None) -> dict[str, list[dict]]:
    """Every claim row (run rows first, then benchmark rows; a placeholder for a claim nobody
    measured) and every goal row."""
    claims = run_rows(report or {})
    goals: list[dict] = []
    if results_dir is not None:
        b_claims, goals = bench_rows(results_dir)
        claims += b_claims
    order = list(CLAIMS.values())
    for name in order:
        if not any(r["claim"] == name for r in claims):
            claims.append(
                row(name, "no measurement found", None, None, "not measurable at this size", "-")
            )
    claims.sort(key=lambda r: order.index(r["claim"]) if r["claim"] in order else len(order))
    return {"claims": claims, "goals": goals}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def split(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """The run's own rows and the rest (saved benchmarks, and placeholders for a claim nobody
    measured), each in table order."""
    ours = [r for r in rows if str(r.get("source", "")).startswith(RUN_SOURCE)]
    return ours, [r for r in rows if r not in ours]


def short_source(r: dict[str, Any]) -> str:
    """A row's source in a few words: ``this run``, or the saved file's name."""
    source = str(r.get("source", ""))
    if source.startswith(RUN_SOURCE):
        return RUN_SOURCE
    return Path(source.split(" (", 1)[0]).name or "-"


def one_per_claim(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim, in order: the first row's figures, with any other rows that
    measured the claim under ``also`` (the table names their sources and verdicts in the
    first row's source cell rather than giving them rows of their own)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["claim"] in out:
            out[r["claim"]]["also"].append(r)
        else:
            out[r["claim"]] = {**r, "also": []}
    return list(out.values())


def source_cell(r: dict[str, Any]) -> str:
    """A row's source, then every other source in ``also`` with its verdict and ratio."""
    cell = str(r.get("source", ""))
    for o in r.get("also", []):
        ratio = "" if o.get("ratio") is None else f" x{o['ratio']:.2f}"
        cell += f"; also {o['source']}: {o['verdict']}{ratio}"
    return cell


def table(rows: list[dict[str, Any]], first: str = "claim") -> str:
    lines = [
        f"| {first} | measure | PD-CLM | baseline | ratio | verdict | source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "-" if r.get("ratio") is None else f"x{r['ratio']:.2f}"
        cells = [
            r["claim"],
            r["measure"],
            _fmt(r.get("pdclm")),
            _fmt(r.get("baseline")),
            ratio,
            f"**{r['verdict']}**",
            source_cell(r),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def markdown(collected: dict[str, list[dict]]) -> str:
    """The claims measured by this run first, in a table of their own; then one row per
    claim from the saved benchmarks, each naming its file; then the benchmarks' goals."""
    ours, saved = split(collected["claims"])
    out = [
        "## Claims",
        "",
        "Each design claim beside the number that tests it and a verdict. Rows under *Saved "
        "benchmarks* come from earlier `pdclm bench` results and name their file.",
        "",
    ]
    if ours:
        out += ["### Measured by this run", "", table(one_per_claim(ours)), ""]
    if saved:
        out += ["### Saved benchmarks", "", table(one_per_claim(saved)), ""]
    if collected.get("goals"):
        out += ["## Benchmark goals", "", "From saved benchmark results.", ""]
        out += [table(collected["goals"], "goal"), ""]
    return "\n".join(out)
