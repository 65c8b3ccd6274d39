"""What every training phase shares: the run it belongs to, its protocol, its schedule and
the end of its results.

A phase is an object with a ``name`` (what the config and CLI call it), a ``key`` (its section
in ``report.json``, e.g. ``phase1``), its ``folders`` in the run folder and ``run(ctx) -> dict``
returning its results;
:mod:`pdclm.pipeline` runs them in order. A phase trains through :class:`~pdclm.train.loop.Trainer`
with a schedule made by :func:`for_steps`, and a phase that evaluates tasks ends its results
with :func:`epilogue`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pdclm import dist
from pdclm.config import Config, TrainConfig
from pdclm.eval.tasks import plot_task_accuracy
from pdclm.train.loop import MetricsLog


@dataclass
class RunContext:
    cfg: Config
    run_dir: Path
    resume: bool = False
    progress: bool = True
    log: MetricsLog | None = None
    results: dict[str, Any] = field(default_factory=dict)
    """Results of the phases finished so far, by phase key (later phases may read them)."""


class Phase(Protocol):
    name: str
    key: str
    folders: tuple[str, ...]
    """Its working folders in the run folder: one being there means the phase has begun."""

    def run(self, ctx: RunContext) -> dict[str, Any]: ...


def for_steps(
    base: TrainConfig,
    steps: int,
    *,
    evals: int | None = None,
    ckpts: int | None = None,
    warmup: int | None = None,
    **changes: Any,
) -> TrainConfig:
    """``base`` re-timed for a run of ``steps``: warm-up at most a tenth of it unless given,
    ``evals`` validations and ``ckpts`` checkpoints spread evenly over it when asked (else
    ``base``'s intervals), and any other field in ``changes`` (which win over all of these)."""
    timed: dict[str, Any] = {
        "steps": steps,
        "warmup": min(base.warmup, steps // 10) if warmup is None else warmup,
    }
    if evals is not None:
        timed["eval_every"] = max(1, steps // evals)
    if ckpts is not None:
        timed["ckpt_every"] = max(1, steps // ckpts)
    return dataclasses.replace(base, **(timed | changes))


def epilogue(
    ctx: RunContext,
    number: int,
    tasks: dict[str, Any],
    result: dict[str, Any],
    plots: dict[str, Callable[[Path], Path]],
) -> dict[str, Any]:
    """The end of Phase ``number``'s results: its task accuracy beside the phase before it
    and the other ``plots`` (file name -> maker; drawn by rank 0 alone), and the training
    summary from the trainer's ``result``."""
    before = ctx.results.get(f"phase{number - 1}", {}).get("tasks", {})
    makers = {
        f"phase{number}_task_accuracy.png": lambda path: plot_task_accuracy(
            {f"after Phase {number - 1}": before, f"after Phase {number}": tasks["tasks"]}, path
        ),
        **plots,
    }
    drawn = [make(ctx.run_dir / name) for name, make in makers.items()] if dist.is_main() else []
    train = {"steps": result["steps"], "seconds": round(result["train_seconds"], 1)}
    if "bytes_per_s" in result:
        train["symbols_per_s"] = round(result["bytes_per_s"], 1)
    return {"train": train | {"final_loss": result.get("loss")}, "plots": [p.name for p in drawn]}
