"""The run report: ``report.json`` (every figure), ``report.md`` (the same, readable), plots.

Each phase returns a nested dict of results; the report keeps them under the phase's key
(``phase1``, …), so a figure is addressed as e.g. ``phase1.val_bpb`` in both files.
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

from pdclm.config import Config, to_dict  # noqa: E402
from pdclm.eval.claims import collect
from pdclm.eval.claims import markdown as claims_markdown
from pdclm.io import write_json_atomic  # noqa: E402


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of a nested dict under dotted keys (lists and histories left out)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, int | float | str | bool) or v is None:
            out[key] = v
    return out


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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


def task_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Held-out accuracy per task: the best constant answer, then each phase that measured it."""
    phases = [
        k
        for k, sec in report.items()
        if k not in ("run", "config") and isinstance(sec, dict) and "tasks" in sec
    ]
    if not phases:
        return [], []
    names = list(report[phases[-1]]["tasks"])
    header = ["task", "best constant", *(f"{p} accuracy" for p in phases)]
    rows = []
    for n in names:
        const = report[phases[-1]]["tasks"][n]
        accs = [report[p]["tasks"].get(n, {}).get("accuracy") for p in phases]
        rows.append(
            [n, f"{const['constant_baseline']:.2f} ({const['constant_answer']!r})"]
            + ["" if a is None else f"{a:.2f}" for a in accs]
        )
    return header, rows


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [
        "# PD-CLM run report",
        "",
        f"Preset `{run['preset']}`, {run['seconds']:.0f} s on {run['machine']} "
        f"(torch {run['torch']}), finished {run['finished']}.",
        "",
    ]
    header, rows = task_table(report)
    if rows:
        lines += [
            "## Held-out task accuracy",
            "",
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        ]
    for key, section in report.items():
        if key in ("run", "config", "claims") or not isinstance(section, dict):
            continue
        lines += [f"## {key}", "", "| figure | value |", "| --- | --- |"]
        for k, v in flatten(section).items():
            lines.append(f"| `{key}.{k}` | {fmt(v)} |")
        lines.append("")
        for plot in section.get("plots", []):
            lines += [f"![{plot}]({plot})", ""]
    if report.get("claims"):
        lines += [claims_markdown(report["claims"])]
    if run.get("curves"):
        lines += ["## Training curves", "", f"![curves]({run['curves']})", ""]
    lines += ["## Config", "", "```json", json.dumps(report["config"], indent=2), "```", ""]
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


def print_summary(report: dict[str, Any], keys: tuple[str, ...] = ()) -> None:
    """A short table of the headline figures on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PD-CLM run summary ({report['run']['dir']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    flat = {
        f"{k}.{kk}": v
        for k, sec in report.items()
        if k not in ("run", "config") and isinstance(sec, dict)
        for kk, v in flatten(sec).items()
    }
    wanted = keys or tuple(k for k in flat if k.split(".", 1)[1] in HEADLINE)
    for k in wanted:
        if k in flat:
            table.add_row(k, fmt(flat[k]))
    table.add_row("run.seconds", fmt(report["run"]["seconds"]))
    console = Console(stderr=False)
    console.print(table)
    header, rows = task_table(report)
    if rows:
        tasks = Table(title="held-out task accuracy")
        for i, h in enumerate(header):
            tasks.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            tasks.add_row(*r)
        console.print(tasks)
    if report.get("claims"):
        verdicts = Table(title="design claims (see report.md for how each is measured)")
        for h in ("claim", "PD-CLM / baseline", "verdict", "source"):
            verdicts.add_column(h)
        for r in report["claims"]["claims"]:
            ratio = "-" if r["ratio"] is None else f"x{r['ratio']:.2f}"
            verdicts.add_row(r["claim"], ratio, r["verdict"], r["source"])
        console.print(verdicts)


HEADLINE = {
    "val_bpb_initial",
    "val_bpb",
    "patcher.mean_len",
    "model.params",
    "train.bytes_per_s",
    "train.steps",
    "entropy_model.val_bpb",
    "data.train_bytes",
    "text_bpb_before",
    "text_bpb_after",
    "consistency.precision",
    "consistency.recall",
    "agreement.precision",
    "agreement.recall",
}
