"""Training the reflection network (the critic of :mod:`pdclm.cognition.reflection`) in the
shared training loop."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from pdclm.cognition.reflection import Reflector, encode, reflection_loss
from pdclm.config import ReflectionConfig, TrainConfig
from pdclm.data.episodes import Judged
from pdclm.train.loop import Trainer
from pdclm.train.phase import for_steps


def train_reflector(
    reflector: Reflector,
    examples: Sequence[Judged],
    cfg: ReflectionConfig,
    out_dir: Path,
    bf16: bool,
    seed: int,
    device: str = "auto",
) -> dict:
    """Fit the critic on ``examples`` in the shared training loop (no checkpoints: a run
    saves each finished version instead)."""
    tcfg = for_steps(
        TrainConfig(),
        cfg.steps,
        evals=1,
        warmup=max(1, cfg.steps // 10),
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=0.0,
        bf16=bf16,
        seed=seed,
        device=device,
        log_every=cfg.steps,
    )
    pool = list(examples)

    def sample(i: int, rows: slice) -> tuple[Tensor, ...]:
        rng = random.Random(f"{seed}:{i}")
        return tuple(t[rows] for t in encode(rng.sample(pool, min(cfg.batch, len(pool)))))

    trainer = Trainer(
        "reflector",
        reflector,
        tcfg,
        out_dir,
        sample=sample,
        loss_fn=reflection_loss,
        checkpoints=False,
        progress=False,
    )
    result = trainer.fit(resume=False)
    reflector.eval()
    return {k: result.get(k) for k in ("steps", "train_seconds", "loss")}
