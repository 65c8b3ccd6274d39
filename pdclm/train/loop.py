"""The one training loop every phase shares.

A phase supplies a model, a ``sample(index, rows)`` function that returns rows ``rows`` of
the global micro-batch with that index (batches depend only on their index, which is what
makes resume exact, on any number of ranks) and a ``loss_fn(model, batch) -> (loss,
metrics)``. The loop owns the rest: AdamW, warmup + cosine schedule, bf16 autocast, gradient
accumulation and clipping, periodic validation, atomic checkpoints, exact resume, a guard
against non-finite losses, metrics (with model FLOP utilisation on CUDA) and a progress bar.

Under ``torchrun`` (``train.parallel=ddp|fsdp``, :mod:`pdclm.train.parallel`) each rank
trains on its share of every global batch, checkpoints are sharded, and rank 0 alone logs.
The caller's model always ends up holding the trained weights, whole, on every rank.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pdclm import dist
from pdclm.config import TrainConfig
from pdclm.train import parallel
from pdclm.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_sharded,
)
from pdclm.train.flops import model_flops, peak_flops

Batch = tuple[Tensor, ...]


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; raised before anything poisoned is written."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio``."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norms, biases) do not. Parameters tagged with an
    ``lr_scale`` attribute (the memory router's gates) get their own group: that multiple of
    the learning rate and no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    scaled = [p for p in params if hasattr(p, "lr_scale")]
    params = [p for p in params if not hasattr(p, "lr_scale")]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    for scale in sorted({p.lr_scale for p in scaled}):
        same = [p for p in scaled if p.lr_scale == scale]
        groups.append({"params": same, "weight_decay": 0.0, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per record) plus TensorBoard events in the run folder."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        record = {"phase": phase, "step": step, "time": time.time(), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class Trainer:
    name: str
    model: nn.Module
    cfg: TrainConfig
    out_dir: Path
    sample: Callable[[int, slice], Batch]
    loss_fn: Callable[[nn.Module, Batch], tuple[Tensor, dict[str, float]]]
    log: MetricsLog | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    max_seconds: float | None = None
    """Stop early at this wall-clock budget (benchmarks); the schedule still assumes cfg.steps."""
    checkpoints: bool = True
    progress: bool = True
    postfix: tuple[str, ...] = ("loss", "bpb", "bytes_per_s")
    """Metrics shown beside the progress bar."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.cfg.device)
        self.part = dist.part()
        self.rows = self.part.rows(self.cfg.batch)
        if self.part.rank != 0:
            self.log, self.progress = None, False
        # under FSDP the shards train and the caller's model receives the whole weights back;
        # it stays on the device, where the phases generate with it between rounds
        self.net = copy.deepcopy(self.model) if self.cfg.parallel == "fsdp" else self.model
        self.model.to(self.device)
        self.step_model = parallel.parallelize(self.net, self.cfg, self.device)
        self.optimizer = make_optimizer(self.net, self.cfg)
        self.ckpt_dir = self.out_dir / "ckpt"
        self.flops_per_step: float | None = None
        self.peak = peak_flops(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _to_device(self, batch: Batch) -> Batch:
        cuda = self.device.type == "cuda"  # pinned host memory copies asynchronously
        return tuple(
            (t.pin_memory() if cuda else t).to(self.device, non_blocking=True)
            if t is not None
            else None
            for t in batch
        )

    def return_weights(self) -> None:
        """Hand the trained weights back to the caller's model (FSDP trains a sharded copy)."""
        if self.net is not self.model:
            self.model.load_state_dict(parallel.full_state_dict(self.net))

    def run_eval(self, step: int) -> dict[str, float]:
        """Every rank evaluates the same held-out batches (a sharded model's forward is a
        collective), so every rank's history is the same."""
        if self.evaluate is None:
            return {}
        self.net.eval()
        with torch.no_grad(), self._autocast():
            metrics = {f"val_{k}": v for k, v in self.evaluate(self.net).items()}
        self.net.train()
        if self.log:
            self.log.write(self.name, step, metrics)
        self.history.append({"step": step, **metrics})
        return metrics

    def restore(self) -> int:
        """Load the newest checkpoint (weights, optimizer, RNG, history); its step, or 0."""
        last = latest_checkpoint(self.ckpt_dir)
        if last is None:
            return 0
        meta = load_checkpoint(last, self.net, self.optimizer)
        self.history = meta["extra"].get("history", [])
        self.return_weights()
        return meta["step"]

    def fit(self, resume: bool = True, until: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps``, or stop at step ``until`` (a checkpoint is written there);
        resumes from the newest checkpoint if there is one. The schedule always spans
        ``cfg.steps``, so stopping and going on is the same as one run."""
        cfg, model = self.cfg, self.step_model
        stop = cfg.steps if until is None else min(until, cfg.steps)
        step = self.restore() if resume else 0
        model.train()
        symbols_seen, train_time, metrics = 0, 0.0, {}
        steady: list[float] = []
        if step == 0:
            self.run_eval(0)
        bar = tqdm(
            total=cfg.steps,
            initial=step,
            desc=self.name,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )
        if self.flops_per_step is None and step < stop:
            first = self._to_device(self.sample(step * cfg.grad_accum, self.rows))
            self.flops_per_step = model_flops(model, first, self.loss_fn, cfg.bf16) * cfg.grad_accum
        budget_start = time.perf_counter()
        while step < stop:
            if (
                self.max_seconds is not None
                and time.perf_counter() - budget_start > self.max_seconds
            ):
                break
            t0 = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * lr_factor(step, cfg, cfg.steps)
            loss_sum, metric_sums = 0.0, {}
            for micro in range(cfg.grad_accum):
                batch = self._to_device(self.sample(step * cfg.grad_accum + micro, self.rows))
                with self._autocast():
                    loss, m = self.loss_fn(model, batch)
                # one rank alone must not stop (the others would wait for it): under several
                # ranks a bad loss shows in the all-reduced gradient norm below, on every rank
                if self.part.world == 1 and not torch.isfinite(loss):
                    self._stop_non_finite(step, f"loss is {loss.item()}")
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                symbols_seen += batch[0].numel() * self.part.world
                for k, v in m.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v / cfg.grad_accum
            grad_norm = parallel.clip_grad_norm(list(self.net.parameters()), cfg.grad_clip)
            if not torch.isfinite(grad_norm):
                self._stop_non_finite(step, f"gradient norm is {grad_norm.item()}")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            step_seconds = time.perf_counter() - t0
            train_time += step_seconds
            if step > 1:  # the first step pays one-off costs (allocation, kernel selection)
                steady.append(step_seconds)
            metrics = {
                **dist.all_mean({"loss": loss_sum, **metric_sums}),
                "lr": self.optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm),
                "bytes_per_s": symbols_seen / train_time,
                **self._utilisation(step_seconds),
            }
            if step % cfg.log_every == 0 or step == cfg.steps:
                if self.log:
                    self.log.write(self.name, step, metrics)
                shown = {k: metrics[k] for k in self.postfix if k in metrics}
                bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            bar.update(1)
            if step % cfg.eval_every == 0 and step < cfg.steps:
                self.run_eval(step)
            if self.checkpoints and step % cfg.ckpt_every == 0 and step < cfg.steps:
                self._save(step)
        bar.close()
        self.return_weights()
        if self.history and self.history[-1]["step"] == step:  # already evaluated here
            final = {k: v for k, v in self.history[-1].items() if k != "step"}
        else:
            final = self.run_eval(step)
        if self.checkpoints:
            self._save(step)
        return {
            "steps": step,
            "train_seconds": train_time,
            # contention (a page fault, the OS scheduling something else) only ever slows a
            # step: the lower quartile is the loop's own speed, where a short probe's mean moved
            # by a third and its median over-read the step by 15-25 %
            "seconds_per_step_q1": (
                statistics.quantiles(steady, n=4)[0] if len(steady) > 1 else None
            ),
            **metrics,
            **final,
            "history": self.history,
        }

    def _utilisation(self, step_seconds: float) -> dict[str, float]:
        """Model FLOP/s of this rank's last step and, on a GPU with a known peak, MFU."""
        if not self.flops_per_step:
            return {}
        rate = self.flops_per_step / step_seconds
        return {"model_flops_per_s": rate} | ({"mfu": rate / self.peak} if self.peak else {})

    def _save(self, step: int) -> None:
        save = save_checkpoint if self.cfg.parallel == "none" else save_sharded
        save(
            self.ckpt_dir,
            step,
            self.net,
            self.optimizer,
            {"history": self.history, "phase": self.name},
            keep=self.cfg.keep_ckpts,
        )

    def _stop_non_finite(self, step: int, what: str) -> None:
        last = latest_checkpoint(self.ckpt_dir)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise NonFiniteLossError(
            f"{self.name}: {what} at step {step}; stopped before writing anything from this step "
            f"({where}). Try a lower train.lr or train.bf16=false, then resume with --resume."
        )
