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

from pdclm.eval.stats import ALPHA, paired, paired_items_needed, unpaired

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


TARGET_GAIN = 0.30
"""The robustness claim's effect: reflect-and-revise ~30 % more accurate on perturbed wording
than answering directly, relative to it."""


def robustness_test(robustness: dict[str, Any]) -> dict[str, Any]:
    """Reflect-and-revise (a) against answering directly (b) on the perturbed wording: the
    paired exact test where the run recorded which items each got right (``paired``), else
    (a report from before it did) Fisher's test on the two counts, which ignores the pairing
    and so errs towards "not measurable". Adds ``needed_items``: what a paired test needs to
    see a +30 % change at the observed base rate and discordance (independent conditions'
    discordance when none was observed)."""
    n = int(robustness.get("items") or 0)
    pairs = (robustness.get("paired") or {}).get("perturbed")
    if pairs:
        t = paired(pairs["both"], pairs["reflect_only"], pairs["plain_only"], pairs["neither"])
        discordance = t["discordance"] or None
    else:

        def right(mode: str) -> int:
            return round(robustness.get(mode, {}).get("perturbed", 0.0) * n)

        t = unpaired(right("reflect"), n, right("plain"), n)
        discordance = None
    t["needed_items"] = paired_items_needed(t["b"]["accuracy"], TARGET_GAIN, discordance)
    t["items"], t["items_per_task"] = n, robustness.get("items_per_task")
    t["tasks"] = robustness.get("tasks")
    return t


def robustness_verdict(t: dict[str, Any]) -> tuple[str, str]:
    """The verdict :func:`robustness_test` supports, and why, in a sentence.

    holds: a significant gain (p < 0.05) of at least +30 %. does not hold: significantly
    worse, or the interval of the relative change lies below +30 %, or no significant gain on
    at least as many items as a +30 % change needs. Otherwise not measurable, saying how many
    items it would take."""
    a, b = t["a"]["right"] / max(1, t["a"]["n"]), t["b"]["right"] / max(1, t["b"]["n"])
    rel, (_, hi), n = t["relative_change"], t["relative_ci95"], t["items"]
    significant = t["p_value"] < ALPHA
    needed = t["needed_items"]
    if significant and a > b and (rel is None or rel >= TARGET_GAIN):
        return "holds", f"a significant gain of at least {percent(TARGET_GAIN)}."
    if significant and a < b:
        return "does not hold", "reflect-and-revise is significantly worse."
    if hi is not None and hi < TARGET_GAIN:
        return "does not hold", f"the interval lies below {percent(TARGET_GAIN)}."
    if significant:
        return "not measurable at this size", (
            f"a significant gain, below {percent(TARGET_GAIN)}, but its interval reaches it."
        )
    if needed is not None and n >= needed:
        return "does not hold", f"no significant gain on {n} questions, enough to see one."
    if b == 0:
        why = "direct answering got none right, so a relative change has no base."
    elif needed is None:
        why = f"{percent(TARGET_GAIN)} over a base rate of {b:.2f} is above an accuracy of 1."
    else:
        why = f"seeing {percent(TARGET_GAIN)} at these rates takes about {needed:,} questions."
    return "not measurable at this size", why


def percent(x: float | None, unbounded: str = "+∞") -> str:
    """A relative change as a signed percentage (``None``: an unbounded end)."""
    return unbounded if x is None else f"{100 * x:+.0f} %"


def robustness_summary(t: dict[str, Any]) -> str:
    """The test in one sentence: counts, relative change with its interval, p-value."""
    lo, hi = t["relative_ci95"]
    rel = (
        "no relative change (direct got none right)"
        if t["b"]["right"] == 0
        else f"{percent(t['relative_change'])} [{percent(lo, '-∞')}, {percent(hi)}]"
    )
    how = "" if t["test"] == "exact McNemar" else " (unpaired: the pairing was not recorded)"
    return (
        f"{t['a']['right']} vs {t['b']['right']} right; {rel}; "
        f"{t['test']} p = {t['p_value']:.2g}{how}."
    )


def robustness_row(robustness: dict[str, Any], source: str) -> dict[str, Any]:
    """Phase 3: accuracy on perturbed wording, reflect-and-revise against answering directly
    on the same held-out questions. The verdict follows :func:`robustness_verdict`; the row
    keeps the whole test under ``test``."""
    t = robustness_test(robustness)
    verdict, why = robustness_verdict(t)
    per_task = f" ({t['items_per_task']} per task)" if t.get("items_per_task") else ""
    if t.get("tasks"):
        per_task = (
            f" ({t['items_per_task']} per task, of {', '.join(t['tasks'])}: the tasks answered"
            " above their constant on development questions)"
        )
    measure = (
        "accuracy on perturbed wording, reflect-and-revise vs answering directly, on "
        f"{t['items']} held-out questions{per_task}; holds at a significant gain of at least "
        f"{percent(TARGET_GAIN)}. {robustness_summary(t)} {why[0].upper()}{why[1:]}"
    )
    rel = t["relative_change"]
    r = row(
        CLAIMS["robustness"],
        measure,
        t["a"]["accuracy"],
        t["b"]["accuracy"],
        verdict,
        source,
        None if rel is None else 1 + rel,
    )
    return {**r, "test": t}


def run_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from a run's own results (``report.json`` sections)."""
    rows = []
    p3 = report.get("phase3")
    if isinstance(p3, dict) and p3.get("robustness"):
        # a report from before robustness() recorded it: the configured count per task
        per_task = report.get("config", {}).get("rl", {}).get("robustness_items")
        rob = {"items_per_task": per_task, **p3["robustness"]}
        rows.append(robustness_row(rob, f"{RUN_SOURCE} (Phase 3 robustness)"))
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
