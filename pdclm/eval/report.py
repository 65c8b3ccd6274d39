"""The run report: ``report.json`` (every figure), ``report.md`` (for a person), plots.

Each phase returns a nested dict of results; ``report.json`` keeps them under the phase's key
(``phase1``, …), so a figure is addressed as e.g. ``phase1.val_bpb``. ``report.md`` and the
terminal summary pick from them what a reader needs first: what ran, the headline figures
with their intervals, accuracy per task, the claims and the plots.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pdclm.config import PHASES, Config, to_dict  # noqa: E402
from pdclm.eval.claims import (  # noqa: E402
    collect,
    one_per_claim,
    robustness_summary,
    robustness_test,
    short_source,
    split,
)
from pdclm.eval.claims import markdown as claims_markdown  # noqa: E402
from pdclm.eval.stats import wilson_interval  # noqa: E402
from pdclm.io import write_json_atomic  # noqa: E402


def read_metrics(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl by phase; for a step logged twice (a resumed run) the last record wins."""
    by_phase: dict[str, dict[tuple[int, bool], dict]] = defaultdict(dict)
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            is_val = any(k.startswith("val_") for k in r)
            by_phase[r["phase"]][(r["step"], is_val)] = r
    return {p: [recs[k] for k in sorted(recs)] for p, recs in by_phase.items()}


def plot_curves(run_dir: Path) -> str | None:
    """Training loss and validation bits per byte against step, one panel per trainer that
    logs them (Phase 3's rewards have their own plot)."""
    metrics = {
        k: v
        for k, v in read_metrics(run_dir).items()
        if any("bpb" in r or "val_bpb" in r for r in v)
    }
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.4), squeeze=False)
    for ax, (phase, recs) in zip(axes[0], metrics.items(), strict=True):
        train = [r for r in recs if "bpb" in r]
        val = [r for r in recs if "val_bpb" in r]
        if train:
            ax.plot([r["step"] for r in train], [r["bpb"] for r in train], label="train bpb", lw=1)
        if val:
            ax.plot([r["step"] for r in val], [r["val_bpb"] for r in val], "o-", label="val bpb")
        ax.set_title(phase)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    name = "curves.png"
    fig.savefig(run_dir / name, dpi=110)
    plt.close(fig)
    return name


PHASE_NAMES = {f"phase{i}": name for i, name in enumerate(PHASES, 1)}
"""A phase's report key (``phase1``, …) and the name the config and CLI give it."""

PLOT_CAPTIONS = {
    "curves.png": "Training loss and held-out bits per byte against step",
    "entropy_profile": "The entropy model's next-byte entropy over a sample; red lines start "
    "patches",
    "patch_lengths": "Patch lengths",
    "task_accuracy": "Held-out accuracy per task with 95 % intervals, after this phase and the "
    "one before, beside the best constant answer",
    "accuracy_vs_budget": "Held-out accuracy by thinking budget, per task and on average",
    "accuracy_vs_steps": "The curriculum probe's accuracy on development questions (never "
    "trained on), each task at its level of the moment, against the optimizer step",
    "reward_channels": "Each reward channel's batch mean per update, and the thinking length",
}
"""A caption per plot, by file name or the part of it after ``phaseN_``."""


def phase_sections(report: dict[str, Any]) -> list[str]:
    """The report's phase sections (``phase1``, …) in the order they ran."""
    return [k for k, v in report.items() if k in PHASE_NAMES and isinstance(v, dict)]


def phase_title(key: str) -> str:
    return f"{key} ({PHASE_NAMES[key]})" if key in PHASE_NAMES else key


def with_interval(accuracy: float, n: int) -> str:
    lo, hi = wilson_interval(accuracy, n)
    return f"{accuracy:.2f} [{lo:.2f}, {hi:.2f}]"


def pooled(tasks: dict[str, dict[str, Any]]) -> tuple[float, int, float]:
    """Accuracy over every held-out item of every task (the item-weighted mean), the item
    count, and the best constant answers' accuracy weighted the same way."""
    n = sum(int(t.get("n", 0)) for t in tasks.values())
    right = sum(round(t["accuracy"] * t.get("n", 0)) for t in tasks.values())
    const = sum(t["constant_baseline"] * t.get("n", 0) for t in tasks.values())
    return (right / n if n else 0.0), n, (const / n if n else 0.0)


def pooled_checked(tasks: dict[str, dict[str, Any]]) -> tuple[float, int]:
    """:func:`pooled` of the checked-decoding accuracies: over every item, and the count."""
    acc, n, _ = pooled({k: {**t["checked"], "constant_baseline": 0.0} for k, t in tasks.items()})
    return acc, n


def caught(stats: dict[str, Any]) -> str:
    """A flag's record in words: precision and recall are ``None`` when nothing was flagged
    or nothing was wrong, which a reader should not have to decode."""
    return (
        f"caught {stats['caught']} of {stats['wrong']} wrong answers ({stats['flagged']} flagged)"
    )


def what_ran(report: dict[str, Any]) -> list[list[str]]:
    """Per phase: what it trained, with the step counts it took (not the configured ones,
    which a time budget or preset may resolve differently), and its wall time."""
    rows = []
    for key in phase_sections(report):
        sec = report[key]
        train = sec.get("train", {})
        parts = []
        if "entropy_model" in sec:
            ent = sec["entropy_model"]
            parts.append(f"entropy model ({ent['params']:,} params, {ent['steps']} steps)")
        if "model" in sec:
            data = sec.get("data", {})
            on = (
                f" on {data['train_bytes']:,} bytes of {', '.join(data.get('sources', []))}"
                if "train_bytes" in data
                else ""
            )
            parts.append(f"then the model ({sec['model']['params']:,} params){on}")
        if sec.get("rounds"):
            episodes = sum(sum(r.get("episodes", {}).values()) for r in sec["rounds"])
            parts.append(
                f"{len(sec['rounds'])} self-play rounds ({episodes:,} episodes), fine-tuned on them"
            )
        if "rewards" in sec:
            parts.append("GRPO on the tasks, rewarded by the reward channels")
        if sec.get("critic_trainings"):
            parts.append(f"reflection network trained {len(sec['critic_trainings'])} times")
        speed = train.get("bytes_per_s") or train.get("symbols_per_s")
        rows.append(
            [
                phase_title(key),
                "; ".join(parts) or "-",
                str(train.get("steps", "-")),
                "-" if speed is None else f"{speed:,.0f}",
                "-" if sec.get("seconds") is None else f"{sec['seconds']:.1f} s",
            ]
        )
    return rows


def headline(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The figures a reader looks for first, as (figure, value, how to read it)."""
    rows: list[tuple[str, str, str]] = []
    p1, p2, p3 = (report.get(f"phase{i}") or {} for i in (1, 2, 3))
    if p1.get("val_bpb") is not None:
        before = p1.get("val_bpb_initial")
        value = f"{p1['val_bpb']:.4g}" if before is None else f"{before:.4g} → {p1['val_bpb']:.4g}"
        rows.append(("bits per byte, held-out text, phase1", value, "before → after pretraining"))
    if p2.get("text_bpb_after") is not None:
        rows.append(
            (
                "bits per byte, held-out text, phase2",
                f"{p2['text_bpb_before']:.4g} → {p2['text_bpb_after']:.4g}",
                "before → after Phase 2: what training on tasks does to text",
            )
        )
    if "patcher" in p1:
        pat = p1["patcher"]
        rows.append(
            (
                "mean patch length",
                f"{pat['mean_len']:.3g} bytes",
                f"median {pat['median_len']:g}, at most {pat['max_len']} ({pat['rule']})",
            )
        )
    for key in phase_sections(report):
        tasks = report[key].get("tasks")
        if tasks:
            acc, n, const = pooled(tasks)
            rows.append(
                (
                    f"mean held-out task accuracy, {key}",
                    with_interval(acc, n),
                    f"95 % Wilson interval over {n} items of {len(tasks)} tasks; "
                    f"best constant answers {const:.2f}",
                )
            )
    final = [k for k in phase_sections(report) if report[k].get("tasks")]
    if final and all("checked" in t for t in report[final[-1]]["tasks"].values()):
        tasks = report[final[-1]]["tasks"]
        acc, n = pooled_checked(tasks)
        rows.append(
            (
                f"mean held-out task accuracy with checked decoding, {final[-1]}",
                with_interval(acc, n),
                f"the CCM resumes a refuted chain of thought before its refuted step; "
                f"{sum(t['checked']['revised'] for t in tasks.values())} answers revised",
            )
        )
    last = [k for k in phase_sections(report) if "consistency" in report[k]]
    if last:
        rows.append(
            (
                f"consistency check, {last[-1]}",
                caught(report[last[-1]]["consistency"]),
                "the CCM's check of each answer against its thinking steps",
            )
        )
    if "agreement" in p2:
        rows.append(
            (
                "sample agreement, phase2",
                caught(p2["agreement"]),
                f"greedy answer flagged when {p2['agreement']['samples']} samples disagree",
            )
        )
    if "reflection" in p3:
        rows.append(
            (
                "reflection network, phase3",
                caught(p3["reflection"]["answer"]),
                "answers it scores as wrong, on the policy's own rollouts",
            )
        )
    if p3.get("probe"):  # Phase 3 keeps its best model by a development probe
        pr, kept = p3["probe"], p3["probe"]["kept"] or {}
        rows.append(
            (
                "model kept, phase3",
                "the Phase 2 model"
                if pr["kept_phase2_model"]
                else f"after update {kept['update']} of {pr['updates']}",
                "dev accuracy by update: "
                + ", ".join(f"{r['update']}: {r['accuracy']:.2f}" for r in pr["history"])
                + f" ({pr['items']} questions; a window replaces the kept model only if it"
                " beats it beyond chance)",
            )
        )
    rob = p3.get("robustness")
    if rob and rob.get("items"):
        n = int(rob["items"])
        plain, refl = rob["plain"], rob["reflect"]
        rows.append(
            (
                "accuracy on perturbed wording, phase3",
                f"reflect-and-revise {with_interval(refl['perturbed'], n)}, "
                f"direct {with_interval(plain['perturbed'], n)}",
                f"{n} questions"
                + (f" ({', '.join(rob['tasks'])})" if rob.get("tasks") else "")
                + f". {robustness_summary(robustness_test(rob))} On clean "
                f"wording: {refl['clean']:.2f} vs {plain['clean']:.2f}.",
            )
        )
    return rows


def constant_cell(task: dict[str, Any]) -> str:
    answer = " ".join(str(task["constant_answer"]).split())
    answer = answer if len(answer) <= 24 else answer[:23] + "…"
    return f"{task['constant_baseline']:.2f} (`{answer.replace('|', '/')}`)"


def task_table(report: dict[str, Any], intervals: bool = True) -> tuple[list[str], list[list[str]]]:
    """Held-out accuracy per task after each phase that measured it (with its 95 % Wilson
    interval when ``intervals``), beside the best constant answer; a last row pools every
    task. An accuracy whose interval lies wholly above the constant answer's is bold."""
    phases = [k for k in phase_sections(report) if report[k].get("tasks")]
    if not phases:
        return [], []
    last = report[phases[-1]]["tasks"]
    checked = all("checked" in t for t in last.values())  # the final model's, if measured
    header = ["task", "n", "best constant", *(f"{p} accuracy" for p in phases)]
    header += [f"{phases[-1]} with checked decoding"] if checked else []

    def cell(t: dict[str, Any] | None, acc: float, n: int, const: float) -> str:
        if t is None:
            return "-"
        text = with_interval(acc, n) if intervals else f"{acc:.2f}"
        return f"**{text}**" if wilson_interval(acc, n)[0] > const else text

    rows = []
    for name, t in last.items():
        row = [name, str(t.get("n", "-")), constant_cell(t)]
        for p in phases:
            pt = report[p]["tasks"].get(name)
            row.append(
                cell(pt, pt["accuracy"], int(pt.get("n", 0)), t["constant_baseline"]) if pt else "-"
            )
        if checked:
            c = t["checked"]
            row.append(cell(c, c["accuracy"], int(c["n"]), t["constant_baseline"]))
        rows.append(row)
    _, n_all, const_all = pooled(last)
    total = ["all tasks", str(n_all), f"{const_all:.2f}"]
    for p in phases:
        acc, n, _ = pooled(report[p]["tasks"])
        total.append(cell(report[p]["tasks"], acc, n, const_all))
    if checked:
        acc, n = pooled_checked(last)
        total.append(cell(last, acc, n, const_all))
    rows.append(total)
    return header, rows


def plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Every plot of the run as (file in the run folder, caption), training curves first."""
    files = [report["run"]["curves"]] if report["run"].get("curves") else []
    for key in phase_sections(report):
        files += report[key].get("plots", [])
    out = []
    for f in files:
        stem = f.removesuffix(".png").split("_", 1)[-1]
        caption = PLOT_CAPTIONS.get(f) or PLOT_CAPTIONS.get(stem, stem.replace("_", " "))
        phase = f.split("_", 1)[0]
        out.append((f, f"{phase_title(phase)}: {caption}" if phase in PHASE_NAMES else caption))
    return out


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def space_lines(report: dict[str, Any], above: float = 0.1) -> list[str]:
    """Phase 2's question spaces whose held-out questions (evaluation and development) take
    more than ``above`` of them: there a model can memorise what it trains on, and training
    misses much of the space."""
    spaces = report.get("phase2", {}).get("question_space") or {}
    rows = spaces.get("rows") or []
    if not rows:
        return []
    small = [r for r in rows if r["held_out_share"] > above]
    lines = [
        "## Question spaces",
        "",
        f"Distinct questions of {len(rows)} task levels, counted where the generator can, else "
        f"sampled ({spaces['draws']:,} draws each, {spaces['seconds']:.1f} s; all in "
        f"`report.json`): {len(small)} held out by more than {above:.0%}.",
        "",
    ]
    if small:
        table = [
            [
                r["task"],
                str(r["level"]),
                r["space"],
                "counted" if r["exact"] else "sampled",
                f"{r['held_out']} ({r['held_out_share']:.0%})",
            ]
            for r in small
        ]
        lines += [*md_table(["task", "level", "questions", "how", "held out"], table), ""]
    return lines


def budget_line(run: dict[str, Any]) -> list[str]:
    """How the run was sized to its wall-clock budget (nothing when it was not)."""
    if not run.get("scale"):
        return []
    speed = run["probe_step_seconds"] / run["reference_step_seconds"]
    factors = run.get("scales") or []
    refits = ""
    if len(factors) == len(PHASES) and any(f and f != run["scale"] for f in factors):
        each = ", ".join(f"{n} x{f:.2f}" for n, f in zip(PHASES, factors, strict=True) if f)
        refits = f" Refitted before each later phase to the time left: {each}."
    return [
        "",
        f"Sized to a budget of {run['budget']:.0f} s: a training step here took "
        f"{run['probe_step_seconds']:.3f} s, x{speed:.2f} the reference machine's, so every "
        f"phase's step counts were scaled by {run['scale']:.2f} (the counts used are in "
        f"`config.json`).{refits}",
    ]


def markdown(report: dict[str, Any]) -> str:
    """report.md: what ran, the headline figures, the task table, the claims and the plots,
    for a person; every figure, under its dotted key, stays in report.json."""
    run = report["run"]
    phases = phase_sections(report)
    lines = [
        "# PD-CLM run report",
        "",
        f"Preset `{run['preset']}`, {', '.join(phase_title(k) for k in phases) or 'no phase'}: "
        f"{run['seconds']:.0f} s on {run['machine']} (torch {run['torch']}), "
        f"finished {run['finished']}. Every figure is in `report.json`, the full config in "
        "`config.json`.",
        *budget_line(report.get("config", {}).get("run", {})),
        "",
        "## What ran",
        "",
        *md_table(
            ["phase", "what it trained", "steps", "symbols per s", "wall time"], what_ran(report)
        ),
        "",
        "## Headline figures",
        "",
        *md_table(["figure", "value", "how to read it"], [list(r) for r in headline(report)]),
        "",
    ]
    header, rows = task_table(report)
    if rows:
        lines += [
            "## Held-out task accuracy",
            "",
            "Accuracy [95 % Wilson interval] on each task's held-out items; **bold** where the "
            "interval lies wholly above the best constant answer's accuracy.",
            *(
                [
                    "With checked decoding, a chain of thought whose own arithmetic the CCM "
                    "refutes (or whose first step miscopies the question's operation) is "
                    "resumed just before the refuted step, that step re-drawn; the answer "
                    "changes only for one that passes (`tasks.check_retries`). It is the "
                    "system's accuracy with its checks, reported beside the model's greedy one."
                ]
                if header and header[-1].endswith("checked decoding")
                else []
            ),
            "",
            *md_table(header, rows),
            "",
        ]
    lines += space_lines(report)
    if report.get("claims"):
        lines += [claims_markdown(report["claims"])]
    drawn = plots(report)
    if drawn:
        lines += ["## Plots", ""]
        for f, caption in drawn:
            lines += [f"**{caption}**", "", f"![{f.removesuffix('.png')}]({f})", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, cfg: Config, results: dict[str, Any], seconds: float) -> dict:
    report = {
        "run": {
            "dir": str(run_dir),
            "preset": cfg.preset,
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads"
            + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
            "torch": torch.__version__,
            "curves": plot_curves(run_dir),
        },
        "config": to_dict(cfg),
        **results,
    }

    # the run's own measurements, beside the saved benchmarks' (labelled with their files)
    report["claims"] = collect(report, cfg.bench.results_dir)
    write_json_atomic(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(markdown(report))
    return report


def print_summary(report: dict[str, Any]) -> None:
    """The report's first sections on the terminal: what ran, the headline figures, the
    task table (accuracies alone; their intervals are in report.md) and the claims."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    run = report["run"]
    ran = Table(
        title=f"PD-CLM run: preset {run['preset']}, {run['seconds']:.0f} s on {run['machine']}"
    )
    for h in ("phase", "what it trained", "steps", "symbols per s", "wall time"):
        ran.add_column(
            h, justify="right" if h in ("steps", "symbols per s", "wall time") else "left"
        )
    for r in what_ran(report):
        ran.add_row(*r)
    console.print(ran)
    figures = Table(title="headline figures")
    figures.add_column("figure")
    figures.add_column("value")
    for name, value, _ in headline(report):
        figures.add_row(name, escape(value))
    console.print(figures)
    header, rows = task_table(report, intervals=False)
    if rows:
        width = max(len(r[0]) for r in rows)
        tasks = Table(title="held-out task accuracy (bold: 95 % interval above the constant)")
        tasks.add_column("task", no_wrap=True, min_width=width)
        tasks.add_column("n", justify="right")
        tasks.add_column("best constant", justify="right")
        for h in header[3:]:
            tasks.add_column(h.removesuffix(" accuracy"), justify="right")
        for i, r in enumerate(rows):
            const = r[2].split(" ", 1)[0]  # the accuracy; the answer itself is in report.md
            cells = [c.replace("**", "[bold]", 1).replace("**", "[/bold]", 1) for c in r[3:]]
            tasks.add_row(escape(r[0]), r[1], const, *cells, end_section=i == len(rows) - 2)
        console.print(tasks)
    if report.get("claims"):
        verdicts = Table(title="design claims (report.md says how each is measured)")
        ours, saved = (one_per_claim(rows) for rows in split(report["claims"]["claims"]))
        sources = [
            short_source(r) + (f" (+{len(r['also'])} more)" if r["also"] else "")
            for r in (*ours, *saved)
        ]
        for h in ("claim", "PD-CLM / baseline", "verdict"):
            verdicts.add_column(h)
        verdicts.add_column("source", no_wrap=True, min_width=max(map(len, sources)))
        for i, r in enumerate([*ours, *saved]):
            ratio = "-" if r["ratio"] is None else f"x{r['ratio']:.2f}"
            verdicts.add_row(
                escape(r["claim"]),
                ratio,
                r["verdict"],
                escape(sources[i]),
                end_section=i == len(ours) - 1,
            )
        console.print(verdicts)
