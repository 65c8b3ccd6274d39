"""The PSE encoder: symbols -> one continuous vector per patch.

Each symbol is embedded together with hashed embeddings of the n-grams that end at it (the
cheapest large gain for a byte encoder), passed through a light causal local transformer, and
the symbols of each patch are pooled into one vector by cross-attention whose query starts as
the max-pool of the patch.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import EncoderConfig
from pdclm.layers import KVCache, RMSNorm, Stack
from pdclm.vocab import VOCAB_SIZE

_HASH_MUL = 1_000_003
_HASH_MOD = 2_147_483_647
_PAD = VOCAB_SIZE - 1  # stands for "before the sequence" in n-grams


def ngram_hashes(tokens: Tensor, ngrams: tuple[int, ...], buckets: int) -> Tensor:
    """(B, T, len(ngrams)) bucket ids of the n-grams ending at each position (causal).

    The hash of the n symbols ending at t is the polynomial ``sum_k (x[t-k] + 1) * M^(n-1-k)``
    mod a prime, so all n at once are one integer matmul of each position's window of the
    last ``max(ngrams)`` symbols (the same values as rolling it n by n, and ~8x fewer ops per
    generated symbol)."""
    K = max(ngrams)
    windows = F.pad(tokens, (K - 1, 0), value=_PAD).unfold(1, K, 1) + 1  # (B, T, K), oldest first
    weights, n = _hash_weights(K, ngrams, tokens.device)
    return ((windows @ weights) % _HASH_MOD * 31 + n) % buckets


@functools.cache
def _hash_weights(K: int, ngrams: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(K, len(ngrams)): column n weights window slot j (k = K-1-j symbols back) by M^(n-1-k);
    and the n of each column."""
    w = torch.zeros(K, len(ngrams), dtype=torch.long)
    for col, n in enumerate(ngrams):
        for k in range(n):
            w[K - 1 - k, col] = pow(_HASH_MUL, n - 1 - k, _HASH_MOD)
    return w.to(device), torch.tensor(ngrams, device=device)


class PatchEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, mlp_ratio: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.byte_embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.ngram_embed = nn.Embedding(len(cfg.ngrams) * cfg.buckets, cfg.dim)
        self.register_buffer(
            "ngram_offset", torch.arange(len(cfg.ngrams)) * cfg.buckets, persistent=False
        )
        self.local = Stack(cfg.dim, cfg.heads, cfg.layers, mlp_ratio, window=cfg.window)
        self.pool_norm = RMSNorm(cfg.dim)
        self.pool_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.pool_kv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.pool_out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def embed(self, tokens: Tensor, history: Tensor | None = None) -> Tensor:
        """Symbol + n-gram embeddings (B, T, D). ``history``: symbols preceding ``tokens``."""
        full = tokens if history is None else torch.cat([history, tokens], dim=1)
        ids = ngram_hashes(full, self.cfg.ngrams, self.cfg.buckets)[:, -tokens.shape[1] :]
        return self.byte_embed(tokens) + self.ngram_embed(ids + self.ngram_offset).sum(dim=2)

    def hidden(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        caches: list[KVCache] | None = None,
        history: Tensor | None = None,
    ) -> Tensor:
        """Per-symbol hidden states (B, T, D) from the causal local transformer."""
        return self.local(self.embed(tokens, history), positions, caches=caches)

    def pool(self, h: Tensor, pid: Tensor, n_patches: int) -> Tensor:
        """Pool symbols into patch vectors (B, P, D); ``pid`` (B, T) is each symbol's patch."""
        B, T, D = h.shape
        heads = self.cfg.heads
        idx = pid.unsqueeze(-1).expand(B, T, D)
        q0 = h.new_full((B, n_patches, D), float("-inf")).scatter_reduce(
            1, idx, h, reduce="amax", include_self=True
        )
        q0 = torch.where(torch.isinf(q0), torch.zeros_like(q0), q0)  # padding patches
        member = pid[:, None, :] == torch.arange(n_patches, device=h.device)[None, :, None]
        member = member | ~member.any(dim=-1, keepdim=True)  # empty (padding) rows see all
        q = self.pool_q(self.pool_norm(q0)).view(B, n_patches, heads, -1).transpose(1, 2)
        k, v = self.pool_kv(self.pool_norm(h)).view(B, T, 2, heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=member[:, None])
        return q0 + self.pool_out(y.transpose(1, 2).reshape(B, n_patches, D))
