"""One Phase 2 arm of docs/phase2_steps.md: Phase 2 alone, from a finished Phase 1 run.

    .venv/bin/python docs/phase2_arm.py BASE OUT [section.key=JSON ...]

BASE is a run folder with ``config.json`` and ``phase1_model/`` (``pdclm run
--phases=pretrain``). The overrides are applied on top of BASE's saved config, e.g.
``cognitive.steps=956 cognitive.batch=4 'cognitive.mix="gap"' train.threads=1``. The arm
ends with the main job's held-out evaluation only (no budget sweep or agreement check) and
writes ``OUT/arm.json``.
"""

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pdclm.config import from_dict, merged, resolve
from pdclm.eval.tasks import evaluate_tasks
from pdclm.train.cognitive import Cognitive
from pdclm.train.phase import RunContext


def overrides(args: list[str]) -> dict[str, Any]:
    """``a.b=JSON`` arguments as a nested dict."""
    changes: dict[str, Any] = {}
    for arg in args:
        key, value = arg.split("=", 1)
        *path, last = key.split(".")
        node = changes
        for part in path:
            node = node.setdefault(part, {})
        node[last] = json.loads(value)
    return changes


class HeldOutOnly(Cognitive):
    """Phase 2 whose evaluation is the held-out accuracy alone."""

    def evaluate(self, ctx, model, sets, result, rounds):  # noqa: ANN001, ANN201
        tasks = evaluate_tasks(model, sets, ctx.cfg.tasks)
        train = {k: result.get(k) for k in ("steps", "train_seconds", "loss")}
        return {**tasks, "rounds": rounds, "train": train}


def main() -> None:
    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    changes = overrides(sys.argv[3:])
    saved = json.loads((base / "config.json").read_text())
    cfg = resolve(from_dict(merged(saved, changes)))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(base / "phase1_model", out / "phase1_model")
    torch.manual_seed(0)
    start = time.perf_counter()
    res = HeldOutOnly().run(RunContext(cfg, out, progress=False))
    res["wall"] = time.perf_counter() - start
    (out / "arm.json").write_text(json.dumps(res, default=str))
    accs = {n: v["accuracy"] for n, v in res["tasks"].items()}
    print(json.dumps(changes), f"wall {res['wall']:.0f}s train {res['train']}")
    print(f"mean {sum(accs.values()) / len(accs):.3f}")
    print(" ".join(f"{n}={a:.2f}" for n, a in accs.items()))


if __name__ == "__main__":
    main()
