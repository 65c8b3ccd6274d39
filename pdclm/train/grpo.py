"""Group-relative policy optimisation: the objective and the tensors it trains on.

For each question the policy samples G solutions (a group); each solution's advantage is its
reward relative to its group (:func:`pdclm.cognition.rewards.advantages`), so no value
network is needed. The loss on every action (a symbol the model chose) is the clipped
importance-weighted advantage, with an asymmetric clip range, averaged over all actions of the
batch (token-level, so long solutions weigh by their length, not 1/length), plus an optional
KL penalty to a frozen reference model (the k3 estimator, always >= 0). Groups whose rewards
are all equal carry no signal and are left out before any compute is spent on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.cognition.ccm import Solution

Batch = tuple[Tensor, ...]


def clipped_objective(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[Tensor, Tensor]:
    """Token-level clipped surrogate (to minimise), and the share of actions clipped.

    ``logp``, ``old_logp``, ``mask``: (R, T); ``adv``: (R,).
    """
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    plain = ratio * a
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * a
    surrogate = torch.minimum(plain, clipped)
    n = mask.sum().clamp(min=1)
    loss = -(surrogate * mask).sum() / n
    clip_share = ((plain != clipped).float() * mask).sum() / n
    return loss, clip_share


def kl_penalty(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean k3 estimate of KL(policy || reference) over the actions: e^d - d - 1, d = ref - logp."""
    d = ref_logp - logp
    return ((torch.exp(d) - d - 1) * mask).sum() / mask.sum().clamp(min=1)


def action_logprobs(model: nn.Module, tokens: Tensor, actions: Tensor) -> Tensor:
    """log pi(action_t | symbols before t) for t >= 1: (R, T-1); 0 where there is no action."""
    logits = model(tokens).float()
    targets = actions[:, 1:]
    logp = F.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return logp * (targets >= 0)


def rollout_tensors(
    solutions: Sequence[Solution], pad: int, bucket: int = 64
) -> tuple[Tensor, Tensor]:
    """Symbols (R, T) and actions (R, T) (-1 where the model chose nothing) of solutions;
    T is rounded up to a multiple of ``bucket`` (few distinct shapes keep CPU kernels fast)."""
    width = -(-max(len(s.symbols) for s in solutions) // bucket) * bucket
    tokens = torch.full((len(solutions), width), pad, dtype=torch.long)
    actions = torch.full((len(solutions), width), -1, dtype=torch.long)
    for i, s in enumerate(solutions):
        tokens[i, : len(s.symbols)] = torch.tensor(s.symbols)
        actions[i, : len(s.actions)] = torch.tensor(s.actions)
    return tokens, actions


def grpo_loss_fn(clip_low: float, clip_high: float, kl: float, stat_names: Sequence[str]):
    """A ``loss_fn`` for the shared loop over batches ``(tokens, actions, adv, old_logp,
    ref_logp, stats)``; ``stats`` are the rollouts' reward means, logged under their names."""

    def loss_fn(model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        tokens, actions, adv, old_logp, ref_logp, stats = batch
        mask = (actions[:, 1:] >= 0).float()
        logp = action_logprobs(model, tokens, actions)
        loss, clip_share = clipped_objective(logp, old_logp, adv, mask, clip_low, clip_high)
        metrics = {name: float(v) for name, v in zip(stat_names, stats.tolist(), strict=True)}
        metrics["clip_share"] = float(clip_share)
        if kl > 0:
            k = kl_penalty(logp, ref_logp, mask)
            loss = loss + kl * k
            metrics["kl"] = float(k.detach())
        return loss, metrics

    return loss_fn
