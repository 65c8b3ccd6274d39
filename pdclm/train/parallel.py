"""Data parallelism applied to a model from outside: DDP and FSDP2, recompute, compilation.

The model code knows nothing of ranks. The training loop asks :func:`parallelize` to wrap the
model (``train.parallel``: ``none``, ``ddp`` or ``fsdp``, optionally with activation
checkpointing and ``torch.compile`` per transformer block); the process group and the rank
helpers are in :mod:`pdclm.dist`.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pdclm.config import TrainConfig
from pdclm.dist import active, no_group_error
from pdclm.layers import Block

# ------------------------------------------------------------------------------ the model


def trainable_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks that train: the units of sharding, recompute and compilation
    (frozen blocks, like the PSE entropy model's in later phases, stay with the root)."""
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
        raise no_group_error(cfg)
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
