"""``pdclm bench human``: how many human labels the automatic reward channels' labels are worth.

``bench human`` takes a pool of the policy's own episodes (a run's Phase 3 rollouts, or fresh
samples), has each labelled through the labelling loop's ``--from-verifier`` path (the task
verifier and the CCM's step checks stand in for the person), and splits them by question into
a training pool and a held-out agreement set. For each number of human labels n it trains
the reflection network from the policy's weights on n of them (in a fixed random order,
weighted ``human.weight``; the calibration share of them fits its calibration instead), once
alone and once with the reward channels' automatic verdicts on every pool episode added
(weight 1), and measures agreement with the held-out verdicts beside the best constant
verdict. The labels saved is the horizontal distance between the two curves at equal
agreement. The automatic verdicts use no gold answer and no verifier (the verifier is the
stand-in for the person here, so counting it as automatic would make the comparison
circular): CCM step checks, the answer following from the steps, no made-up numbers, and
agreement within the group of samples.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pdclm.bench.common import stamp
from pdclm.cognition.reflection import CRITIC_FILE, Reflector, calibrate, load_reflector, score
from pdclm.config import Config
from pdclm.data.episodes import Judged
from pdclm.data.human import HumanExample, read_examples, split_by_question
from pdclm.eval.claims import CLAIMS
from pdclm.eval.human import agreement, auc, rate
from pdclm.eval.labelling import (
    Assessed,
    assess,
    candidates_for,
    label,
)
from pdclm.eval.tasks import autocast_context, eval_budget, held_out_sets
from pdclm.io import write_json_atomic
from pdclm.model.io import find_model_dir, load_model
from pdclm.model.pdclm import PDCLM
from pdclm.pipeline import run_phases
from pdclm.train.critic import train_reflector


def _train_point(
    policy: PDCLM,
    cfg: Config,
    train: list[Judged],
    cal: list[Judged],
    held: Sequence[HumanExample],
    seed: int,
    out_dir: Path,
) -> dict[str, Any]:
    """A critic from the policy's weights, trained on ``train`` (if any) and calibrated on
    ``cal``: its agreement with ``held``."""
    rf = dataclasses.replace(cfg.rl.reflection, steps=cfg.human.steps)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        critic = Reflector(policy, rf.latent_layers)
    if train:
        train_reflector(critic, train, rf, out_dir, cfg.train.bf16, seed, cfg.train.device)
        critic.cpu()
    with autocast_context(cfg.train.bf16):
        fit = calibrate(critic, cal)
        scores = [s.answer for s in score(critic, [ex.episode for ex in held])]
    y = [ex.verdict for ex in held]
    t = cfg.rl.reflection.threshold
    return {"agreement": rate([s >= t for s in scores], y), "auc": auc(scores, y), "fit": fit}


METRICS = {
    "auc": "ranking agreement (AUC)",
    "agreement": "agreement at the threshold",
}
"""What each point measures on the held-out verdicts. AUC, the share of (right, wrong) verdict
pairs the critic scores in the person's order, is the headline: a constant verdict has 0.5
whatever the share of right episodes, whereas plain agreement is dominated by that share when
most episodes are wrong (a constant "wrong" then agrees with most verdicts)."""
CHANCE = {"auc": 0.5}


def _first_reach(curve: list[tuple[float, float | None]], level: float) -> float | None:
    """The label count at which a curve first reaches ``level`` (linear between points)."""
    prev = None
    for n, a in curve:
        if a is None:
            continue
        if a >= level:
            if prev is None:
                return n
            n0, a0 = prev
            return n0 + (n - n0) * (level - a0) / (a - a0)
        prev = (n, a)
    return None


def curves(points: dict[str, list[dict[str, Any]]], metric: str) -> dict[str, list[dict]]:
    """Per variant and label count: the mean, min and max of ``metric`` over the seeds."""
    out: dict[str, list[dict]] = {}
    for variant, rows in points.items():
        out[variant] = []
        for n in sorted({p["labels"] for p in rows}):
            vals = [p[metric] for p in rows if p["labels"] == n and p[metric] is not None]
            mean = sum(vals) / len(vals) if vals else None
            out[variant].append(
                {
                    "labels": n,
                    "mean": mean,
                    "min": min(vals, default=None),
                    "max": max(vals, default=None),
                }
            )
    return out


def _xy(curve: list[dict]) -> list[tuple[float, float | None]]:
    return [(float(p["labels"]), p["mean"]) for p in curve]


def labels_saved(alone: list[dict], added: list[dict]) -> list[dict[str, Any]]:
    """At each value the curve with the channels' labels reaches, the human labels each curve
    needs for it, and the difference (None where the human-only curve never gets there)."""
    out = []
    for p in added:
        if p["mean"] is None:
            continue
        needs, with_channels = (
            _first_reach(_xy(alone), p["mean"]),
            _first_reach(_xy(added), p["mean"]),
        )
        saved = None if needs is None or with_channels is None else needs - with_channels
        out.append(
            {
                "value": p["mean"],
                "with_channels": with_channels,
                "human_only": needs,
                "saved": saved,
            }
        )
    return out


def _claim(curve: dict[str, list[dict]], metric: str, chance: float, source: str) -> dict:
    """The claims-table row: the human labels the critic needs to reach what the human-only
    critic reaches with every label of the pool, with the channels' labels against without."""
    alone, added = curve["human only"], curve["human + reward channels"]
    target = alone[-1]["mean"]
    n_alone = _first_reach(_xy(alone), target) if target is not None else None
    n_added = _first_reach(_xy(added), target) if target is not None else None
    if target is None or target <= chance:
        verdict = "not measurable at this size"  # with every label it is no better than chance
    elif n_added is not None and n_alone is not None and n_added < n_alone:
        verdict = "holds"
    else:
        verdict = "does not hold"
    level = "n/a" if target is None else f"{target:.3f}"
    return {
        "claim": CLAIMS["human"],
        "measure": (
            f"human labels the reflection network needs to reach a {METRICS[metric]} of {level} "
            f"with held-out human verdicts (what it reaches with all {alone[-1]['labels']} pool "
            f"labels; chance {chance:.3f}), with the reward channels' labels (pdclm) vs "
            "without (baseline)"
        ),
        "pdclm": n_added,
        "baseline": n_alone,
        "ratio": n_added / n_alone if n_added is not None and n_alone else None,
        "verdict": verdict,
        "source": source,
    }


def bench_human(
    cfg: Config, ckpt: str | None, out: Path | None = None, json_path: str | None = None
) -> dict[str, Any]:
    """``pdclm bench human``: see the module docstring. Without ``ckpt`` it first trains a run
    of the configured phases but Phase 3 (whose model the episodes are sampled from)."""

    t_start = time.perf_counter()
    out = out or Path("runs") / f"bench-human-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        run_dir = out / "run"
        phases = [p for p in cfg.phases if p != "reflective"]
        run_phases(cfg, run_dir, resume=True, progress=True, only=phases)
        model_dir = find_model_dir(run_dir)
    else:
        model_dir = find_model_dir(ckpt)
        run_dir = model_dir.parent
    policy, _ = load_model(model_dir)
    policy.eval()
    rf = cfg.rl.reflection
    if (model_dir / CRITIC_FILE).exists():
        ranker = load_reflector(policy, rf.latent_layers, model_dir)
    else:
        ranker = Reflector(policy, rf.latent_layers).eval()

    # the pool: the policy's episodes, each with a verdict written by the labelling loop
    exclude = {it.question for items in held_out_sets(cfg.tasks).values() for it in items}
    candidates = candidates_for(run_dir, policy, cfg, exclude, cfg.train.seed, False)
    with autocast_context(cfg.train.bf16):
        assessed = assess(candidates, ranker, eval_budget(cfg.tasks), rf.threshold)
    verdicts = out / "verdicts.jsonl"
    verdicts.unlink(missing_ok=True)
    stats = label(assessed, verdicts, "verifier", from_verifier=True)
    examples = read_examples(verdicts)
    by_key: dict[str, Assessed] = {a.candidate.key: a for a in assessed}
    train_part, cal_part, held = split_by_question(
        examples, cfg.human.holdout, cfg.human.calibration
    )
    pool = train_part + cal_part
    in_cal = {id(ex) for ex in cal_part}
    automatic = {ex.key: by_key[ex.key].automatic_label() for ex in pool}

    baseline = agreement(ranker, held, cfg)  # constant verdict and every channel on held-out
    counts = sorted({min(n, len(pool)) for n in cfg.human.counts})
    variants = ("human only", "human + reward channels")
    points: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    bar = tqdm(total=len(counts) * len(variants) * cfg.human.seeds, desc="bench human")
    for s in range(cfg.human.seeds):
        order = list(pool)
        random.Random(f"human-order:{s}").shuffle(order)
        for n in counts:
            chosen = order[:n]
            human_train = [ex.judged(cfg.human.weight) for ex in chosen if id(ex) not in in_cal]
            cal = [ex.judged() for ex in chosen if id(ex) in in_cal]
            labelled = {ex.key for ex in chosen}
            auto = [j for k, j in automatic.items() if k not in labelled]
            for v in variants:
                train = human_train + (auto if v == variants[1] else [])
                seed = cfg.train.seed * 7919 + s
                r = _train_point(policy, cfg, train, cal, held, seed, out / "critic")
                points[v].append({"labels": n, "seed": s, "train_examples": len(train), **r})
                bar.update()
    bar.close()

    chance = {**CHANCE, "agreement": baseline.get("constant", 1.0)}
    per_metric = {m: curves(points, m) for m in METRICS}
    result = stamp(
        {
            "run": str(run_dir),
            "episodes": len(candidates),
            "labelled": stats,
            "pool": {
                "train": len(train_part),
                "calibration": len(cal_part),
                "questions": len({ex.episode.question for ex in pool}),
            },
            "held_out": baseline,
            "held_out_disjoint_by_question": not (
                {ex.episode.question for ex in pool} & {ex.episode.question for ex in held}
            ),
            "automatic_labels": {
                "pool": len(automatic),
                "right_share": sum(j.answer_ok for j in automatic.values())
                / max(1, len(automatic)),
                "agree_with_verdicts": rate(
                    [automatic[ex.key].answer_ok for ex in pool], [ex.verdict for ex in pool]
                ),
            },
            "settings": {
                "counts": counts,
                "seeds": cfg.human.seeds,
                "critic_steps": cfg.human.steps,
                "human_weight": cfg.human.weight,
                "calibration_share": cfg.human.calibration,
                "holdout_share": cfg.human.holdout,
            },
            "points": points,
            "chance": chance,
            "curves": per_metric,
            "labels_saved": {
                m: labels_saved(c[variants[0]], c[variants[1]]) for m, c in per_metric.items()
            },
            "claims": [_claim(per_metric["auc"], "auc", chance["auc"], "pdclm bench human")],
            "seconds": round(time.perf_counter() - t_start, 1),
        },
        cfg,
    )
    plot_human(result, out / "bench_human.png")
    if json_path:
        plot_human(result, Path(json_path).with_suffix(".png"))
    write_json_atomic(out / "bench_human.json", result)
    print(summary(result))
    return result


def summary(result: dict[str, Any]) -> str:
    h = result["held_out"]
    variants = list(result["points"])
    lines = [
        f"held-out: {h.get('examples', 0)} verdicts on {h.get('questions', 0)} questions "
        f"({h.get('right_share', 0):.0%} right); constant verdict agrees "
        f"{h.get('constant', float('nan')):.3f}",
        "| human labels | " + " | ".join(f"{m}: {v}" for m in METRICS for v in variants) + " |",
        "|" + " --- |" * (1 + len(METRICS) * len(variants)),
    ]
    cells = [result["curves"][m][v] for m in METRICS for v in variants]
    for row in zip(*cells, strict=True):
        values = ["-" if p["mean"] is None else f"{p['mean']:.3f}" for p in row]
        lines.append(f"| {row[0]['labels']} | " + " | ".join(values) + " |")
    c = result["claims"][0]
    lines.append(f"{c['claim']}: {c['verdict']} ({c['pdclm']} vs {c['baseline']} labels)")
    return "\n".join(lines)


def plot_human(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4))
    for ax, (metric, title) in zip(axes, METRICS.items(), strict=True):
        for (name, curve), style in zip(result["curves"][metric].items(), "os", strict=True):
            pts = [p for p in curve if p["mean"] is not None]
            xs = [p["labels"] for p in pts]
            ax.plot(xs, [p["mean"] for p in pts], f"{style}-", label=name)
            ax.fill_between(xs, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.15)
        chance = result["chance"][metric]
        label = "constant verdict" if metric == "agreement" else "chance / constant verdict"
        ax.axhline(chance, color="grey", ls="--", lw=1, label=label)
        c = result["claims"][0]
        if metric == "auc" and c["pdclm"] is not None and c["baseline"] is not None:
            level = result["curves"][metric]["human only"][-1]["mean"]
            ax.annotate(
                f"{c['baseline'] - c['pdclm']:.0f} labels saved",
                xy=(c["pdclm"], level),
                xytext=(c["baseline"], level),
                fontsize=8,
                ha="right",
                va="bottom",
                arrowprops={"arrowstyle": "->", "color": "C2"},
            )
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, max(10, max(p["labels"] for p in curve)) * 1.2)
        ax.set_xlabel("human labels the reflection network trained on")
        ax.set_ylabel(f"{title} with held-out verdicts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("reflection network vs held-out verdicts (band: min-max over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
