"""``pdclm bench rewards``: Phase 3 twice from the same Phase 2 model on the same budget,
every reward channel against correctness alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from pdclm.bench.common import pyplot
from pdclm.config import Config
from pdclm.model.io import find_model_dir
from pdclm.pipeline import run_phases


def bench_rewards(cfg: Config, ckpt: str | None, out: Path | None = None) -> dict[str, Any]:
    """Phase 3 with all reward channels and with correctness alone, from the same Phase 2
    model with the same steps and seeds: held-out accuracy, mean thinking length, and the
    robustness figures of each."""
    source = find_model_dir(ckpt)
    if (source.parent / "phase2_model").exists():  # a finished run: start where Phase 3 did
        source = source.parent / "phase2_model"
    out = out or Path("runs") / f"bench-rewards-{time.strftime('%Y%m%d-%H%M%S')}"
    variants = {
        "all channels": cfg.rl.rewards,
        "correctness only": dataclasses.replace(
            cfg.rl.rewards, consistency=0.0, justification=0.0, efficiency=0.0, hallucination=0.0
        ),
    }
    rows: dict[str, Any] = {}
    for name, rewards in variants.items():
        run = out / name.replace(" ", "_")
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(source, run / "model")
        vcfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, rewards=rewards))
        t0 = time.perf_counter()
        p3 = run_phases(vcfg, run, only=["reflective"])["phase3"]
        tasks = p3["tasks"]
        rows[name] = {
            "accuracy": sum(t["accuracy"] for t in tasks.values()) / len(tasks),
            "thinking_bytes": sum(t["thinking_bytes"] for t in tasks.values()) / len(tasks),
            "per_task": {n: t["accuracy"] for n, t in tasks.items()},
            "robustness": p3["robustness"],
            "rewards": p3["rewards"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    a, c = rows["all channels"], rows["correctness only"]
    result = {
        "start": str(source),
        "steps": cfg.rl.steps,
        "variants": rows,
        "accuracy_ratio": a["accuracy"] / c["accuracy"] if c["accuracy"] else None,
        "thinking_ratio": a["thinking_bytes"] / c["thinking_bytes"]
        if c["thinking_bytes"]
        else None,
    }
    (out / "bench_rewards.json").write_text(json.dumps(result, indent=2))
    plot_rewards_bench(rows, out / "bench_rewards.png")
    for name, r in rows.items():
        print(f"{name:>18}: accuracy {r['accuracy']:.3f}, thinking {r['thinking_bytes']:.0f} bytes")
    return result


def plot_rewards_bench(rows: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(rows)
    ax.bar(names, [rows[n]["accuracy"] for n in names], color=["C0", "C1"])
    ax.set_ylabel("mean held-out accuracy")
    bx.bar(names, [rows[n]["thinking_bytes"] for n in names], color=["C0", "C1"])
    bx.set_ylabel("mean thinking bytes")
    fig.suptitle("Phase 3: every reward channel vs correctness alone (same steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
