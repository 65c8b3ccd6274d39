"""Ranks and the process group: the helpers every layer may use, single-process no-ops
without ``torchrun``.

A run launched by ``torchrun`` joins the process group once (:func:`init`) and reads only its
own rows of every global batch (:class:`Part`). Work outside training follows two rules:
files shared by all ranks are written by rank 0 while the others wait (:func:`main_first`,
:func:`barrier`), and generation that every rank needs is split across ranks and gathered
(:func:`spread`). Wrapping a model for DDP or FSDP2 is training's business
(:mod:`pdclm.train.parallel`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from pdclm.config import ConfigError, TrainConfig

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Part:
    """This process's place among ``world`` data-parallel ranks."""

    rank: int = 0
    world: int = 1

    def rows(self, n: int, what: str = "train.batch") -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows (equal shares, so that
        averaging the ranks' gradients averages over the global batch)."""
        if n % self.world:
            raise ConfigError(
                f"{what}={n} is the global batch and must divide by the {self.world} ranks"
            )
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def part() -> Part:
    return Part(dist.get_rank(), dist.get_world_size()) if active() else Part()


def is_main() -> bool:
    return part().rank == 0


def launched_world() -> int:
    """Processes ``torchrun`` started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(cfg: TrainConfig) -> Part:
    """Join the process group ``torchrun`` describes (NCCL on CUDA, gloo on CPU), pin this
    process to GPU ``LOCAL_RANK``; check that the launch and ``train.parallel`` agree."""
    world = launched_world()
    launched = "RANK" in os.environ and "MASTER_ADDR" in os.environ
    if cfg.parallel == "none":
        if world > 1:
            raise ConfigError(
                f"launched as {world} processes but train.parallel=none; "
                "set --train.parallel=ddp or --train.parallel=fsdp"
            )
        return Part()
    if not launched:
        raise no_group_error(cfg)
    if not active():
        cuda = cfg.device != "cpu" and torch.cuda.is_available()
        gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else None
        if gpu is not None:
            torch.cuda.set_device(gpu)
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=timedelta(hours=2), device_id=gpu
        )
    return part()


def no_group_error(cfg: TrainConfig) -> ConfigError:
    return ConfigError(
        f"train.parallel={cfg.parallel} needs several processes: launch with "
        "`torchrun --nproc_per_node=N -m pdclm ...` (or use --train.parallel=none)"
    )


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it builds a shared cache); the others run it after, when
    they find the cache complete. No two ranks ever write the same files at once."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast(obj: T) -> T:
    """Rank 0's value of ``obj`` on every rank (e.g. a run folder named by the clock)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def spread(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``fn(items)`` computed in round-robin shares across ranks and gathered, in order, on
    every rank. For generation: every rank ends with the same results at 1/world the cost."""
    p = part()
    if p.world == 1:
        return fn(items)
    mine = fn(items[p.rank :: p.world])
    parts: list[list[R] | None] = [None] * p.world
    dist.all_gather_object(parts, mine)
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for r, got in enumerate(parts):
        out[r :: p.world] = got
    return out


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """Per-rank metrics averaged over ranks (the logged loss is the global batch's)."""
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist(), strict=True))
