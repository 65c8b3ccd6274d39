"""The PSE entropy model and the bit-entropy profile.

A small causal byte model, trained first in Phase 1 and then frozen. Its next-symbol entropy
(in bits) at every position is the signal the patcher cuts on. Every layer attends over a
sliding window of ``window`` symbols, so a position's entropy depends on at most
:attr:`EntropyModel.reach` symbols before it, in training, in the stored profile and in
generation alike: no position is ever read past the context the model learned (entropies
computed past it drift upward and turn almost every byte into a boundary), a prefix's profile
never changes when bytes are appended, and a long stream is profiled in one pass, each
position once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import EntropyConfig
from pdclm.layers import KVCache, Stack, init_weights
from pdclm.vocab import VOCAB_SIZE


def entropy_bits(logits: Tensor) -> Tensor:
    """Entropy in bits of the softmax of the last dimension (computed in fp32)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2.0)


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyConfig, mlp_ratio: float = 8 / 3) -> None:
        super().__init__()
        self.reach = cfg.layers * (cfg.window - 1) + 1
        """How many symbols before position t the entropy of predicting t can depend on (the
        last layer's state at t - 1 reads ``layers * (window - 1)`` symbols before t - 1)."""
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.stack = Stack(cfg.dim, cfg.heads, cfg.layers, mlp_ratio, window=cfg.window)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)
        init_weights(self)

    def forward(
        self, tokens: Tensor, positions: Tensor | None = None, caches: list[KVCache] | None = None
    ) -> Tensor:
        """Next-symbol logits (B, T, V)."""
        return self.head(self.stack(self.embed(tokens), positions, caches=caches))

    @torch.no_grad()
    def profile(self, tokens: Tensor, chunk: int = 1 << 12) -> Tensor:
        """Entropy in bits (B, N) of predicting symbol t from the symbols before it; position 0
        gets 0.

        A long input goes through in pieces of about ``chunk`` positions over the batch (at
        least 4x :attr:`reach` per row), each given the :attr:`reach` symbols before it, all
        that its first entropy depends on: the same values as one pass, in bounded memory (the
        memory bench's 64x passkey batch, 16 rows of 8k symbols, peaked at 1.32 GB read in one
        pass, 0.80 GB in pieces) and a shard in one call."""
        x = tokens[:, :-1]
        step = max(4 * self.reach, chunk // max(1, x.shape[0]))
        out = []
        for a in range(0, x.shape[1], step):
            lo = max(0, a - self.reach)
            out.append(entropy_bits(self(x[:, lo : a + step]))[:, a - lo :])
        return F.pad(torch.cat(out, 1) if out else x.new_zeros(x.shape, dtype=torch.float), (1, 0))


class EntropyStream:
    """Incremental profile for generation: entropy of the next position, one symbol per row at
    a time (rows advance together); each value equals :meth:`EntropyModel.profile`'s."""

    def __init__(self, model: EntropyModel) -> None:
        self.model = model
        self.length = 0
        self.caches = model.stack.new_caches()  # each keeps its layer's window

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        for c in self.caches:
            c.select(rows)

    @torch.no_grad()
    def push(self, tokens: Tensor) -> Tensor:
        """Append one symbol per row (B,); return the entropy (bits, (B,)) of the next one."""
        pos = torch.tensor([self.length], device=tokens.device)
        self.length += 1
        return entropy_bits(self.model(tokens[:, None], pos, self.caches)[:, -1])

    @torch.no_grad()
    def prefill(self, tokens: Tensor) -> Tensor:
        """Read a prompt (B, T) into an empty stream at once, leaving it as T pushes would;
        return the profile (B, T + 1) of the prompt and of the symbol after it (the values
        the pushes would have returned, after a 0 for position 0)."""
        T = tokens.shape[1]
        logits = self.model(tokens, torch.arange(T, device=tokens.device), self.caches)
        self.length = T
        return F.pad(entropy_bits(logits), (1, 0))
