"""Objectives and evaluations the phases plug into the shared loop."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.model.pdclm import LN2, next_symbol_loss


def lm_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
    """Next-symbol loss for any model whose forward maps (tokens[, entropy]) to logits; a
    model with memory also reports its router's read shares and write rate."""
    loss, bpb = next_symbol_loss(model(*batch), batch[0][:, 1:])
    return loss, {"bpb": float(bpb.detach()), **memory_stats(model)}


def memory_stats(model: nn.Module) -> dict[str, float]:
    """The router's read shares and write rate of the last forward (none without memory)."""
    memory = getattr(getattr(model, "module", model), "memory", None)
    return dict(memory.last_stats) if memory is not None else {}


def causal_lm_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
    """Next-symbol loss for a plain causal model that maps N inputs to N sets of logits."""
    tokens = batch[0]
    loss, bpb = next_symbol_loss(model(tokens[:, :-1]), tokens[:, 1:])
    return loss, {"bpb": float(bpb.detach())}


def weighted_lm_loss(
    model: nn.Module, batch: tuple[Tensor, ...]
) -> tuple[Tensor, dict[str, float]]:
    """Next-symbol loss with a weight per target (``batch = (tokens, weights)``): episodes
    weigh their thinking and answer fully, their question a little, padding not at all."""
    tokens, weights = batch
    logits = model(tokens)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    )
    w = weights.reshape(-1).float()
    loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
    return loss, {"bpb": float(loss.detach()) / LN2, **memory_stats(model)}


Objective = Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, dict[str, float]]]


def mean_bpb(
    batches: list[tuple[Tensor, ...]], device: torch.device, loss_fn: Objective = lm_loss
) -> Callable[[nn.Module], dict]:
    """An ``evaluate`` function: mean bits per byte over fixed held-out batches."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        vals = [loss_fn(model, tuple(t.to(device) for t in b))[1]["bpb"] for b in batches]
        return {"bpb": float(np.mean(vals))}

    return evaluate
