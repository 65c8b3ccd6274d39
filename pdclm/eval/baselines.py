"""Baselines the benchmarks compare PD-CLM against, trained through the same loop and data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pdclm.model.layers import Stack, init_weights
from pdclm.vocab import VOCAB_SIZE


class ByteTransformer(nn.Module):
    """A plain byte-level transformer: every symbol is a position (patch length 1)."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 8 / 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.stack = Stack(dim, heads, layers, mlp_ratio)
        self.head = nn.Linear(dim, VOCAB_SIZE, bias=False)
        init_weights(self)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
        """Logits (B, N-1, V) predicting ``tokens[:, 1:]``; ``entropy`` is ignored."""
        return self.head(self.stack(self.embed(tokens[:, :-1])))


def matched_byte_transformer(
    target_params: int, dim: int, heads: int, mlp_ratio: float
) -> ByteTransformer:
    """The byte transformer of width ``dim`` whose depth brings it closest to ``target_params``."""
    per_layer = sum(p.numel() for p in Stack(dim, heads, 1, mlp_ratio).blocks.parameters())
    fixed = ByteTransformer(dim, 0, heads, mlp_ratio).num_params()
    layers = max(1, round((target_params - fixed) / per_layer))
    torch.manual_seed(0)
    return ByteTransformer(dim, layers, heads, mlp_ratio)
