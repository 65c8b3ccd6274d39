"""Distribution, applied from outside the model: process group, data parts, DDP and FSDP2.

The model code knows nothing of ranks. A run launched by ``torchrun`` joins the process
group once (:func:`init`); the training loop asks :func:`parallelize` to wrap the model
(``train.parallel``: ``none``, ``ddp`` or ``fsdp``, optionally with activation
checkpointing and ``torch.compile`` per transformer block) and reads only its own rows of
every global batch (:class:`Part`). Work outside training follows two rules: files shared
by all ranks are written by rank 0 while the others wait (:func:`main_first`, :func:`barrier`),
and generation that every rank needs is split across ranks and gathered (:func:`spread`).
Without ``torchrun`` every helper here is the single-process no-op.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

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
        raise _no_group(cfg)
    if not active():
        cuda = cfg.device != "cpu" and torch.cuda.is_available()
        gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else None
        if gpu is not None:
            torch.cuda.set_device(gpu)
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=timedelta(hours=2), device_id=gpu
        )
    return part()


def _no_group(cfg: TrainConfig) -> ConfigError:
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


# ------------------------------------------------------------------------------ the model


def trainable_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks that train: the units of sharding, recompute and compilation
    (frozen blocks, like the PSE entropy model's in later phases, stay with the root)."""
    from pdclm.model.layers import Block

    return [
        m
        for m in model.modules()
        if isinstance(m, Block) and any(p.requires_grad for p in m.parameters())
    ]


def _per_block(block: nn.Module, cfg: TrainConfig) -> None:
    """Compile the block's forward and/or recompute its activations in backward (names and
    state-dict keys stay as they are). Only global-attention blocks (the latent transformer,
    the entropy model) compile: inductor corrupts the heap compiling the encoder's windowed
    blocks (torch 2.13, CPU)."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward
    if cfg.compile and block.attn.window is None:
        forward = torch.compile(forward)
    if cfg.activation_checkpointing:
        forward = functools.partial(checkpoint, forward, use_reentrant=False)
    block.forward = forward


def parallelize(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Apply ``cfg``'s activation checkpointing, compilation and data parallelism to
    ``model`` (on ``device``); returns the module to call in training.

    ``fsdp`` shards every trainable block, then the root (FSDP2 ``fully_shard``), with bf16
    parameters and fp32 gradient reduction when ``train.bf16``; ``ddp`` replicates.
    """
    if cfg.parallel != "none" and not active():
        raise _no_group(cfg)
    blocks = trainable_blocks(model)
    for b in blocks:
        _per_block(b, cfg)
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(device)  # NCCL sends device tensors; fully_shard keeps this rank's shard only
        with torch.no_grad():  # every rank starts from rank 0's weights, as under DDP
            for t in model.state_dict().values():
                dist.broadcast(t, 0)
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if cfg.bf16
            else MixedPrecisionPolicy()
        )
        mesh = dist.init_device_mesh(device.type, (dist.get_world_size(),))
        for b in blocks:
            fully_shard(b, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model
    model.to(device)
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every weight in full on every rank (a collective for a sharded model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> Tensor:
    """Clip to ``max_norm``; the global norm as a plain tensor (sharded grads included)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """Per-rank metrics averaged over ranks (the logged loss is the global batch's)."""
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist(), strict=True))
