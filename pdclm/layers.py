"""Transformer building blocks shared by every stack in PD-CLM.

The entropy model, the local encoder, the latent transformer, the local decoder and the byte
baseline are all made of :class:`Block`. A block attends either causally over everything it is
given (``window=None``) or over a causal local window, optionally only among positions of the
same segment (the decoder's "same patch" rule). Each block can also run one position at a
time against a cache, which is what makes generation incremental: :class:`KVCache` for rows
that advance together, :class:`RowKVCache` for rows that advance at their own pace (the
latent stack, where each row closes patches at different steps). An empty cache given many
positions at once (a prompt's prefill) is filled: the block attends exactly as without a
cache, and the cache keeps what later single steps would have seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # in fp32 (the fused kernel needs matching dtypes; bf16 autocast would break that)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)


_INV_FREQ: dict[tuple[int, float, torch.device], Tensor] = {}


def rotary(head_dim: int, positions: Tensor, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables (*positions.shape, head_dim/2) for the given absolute positions."""
    key = (head_dim, base, positions.device)
    if key not in _INV_FREQ:  # computed once: a generation step builds tables for 3-4 stacks
        exponents = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
        _INV_FREQ[key] = 1.0 / base**exponents
    angles = positions.float()[..., None] * _INV_FREQ[key]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) by per-position angles; computed in fp32, returned in x's dtype.

    Tables are (T, D/2) for positions shared by all rows, or (B, T, D/2) for per-row positions;
    ``x`` may carry leading dimensions before B (queries and keys rotated in one call).
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class KVCache:
    """Keys/values of the positions seen so far; keeps only the last ``window`` if set.

    Rows advance together (one position per call). With segment ids, a query sees only the
    cached keys of its own segment: the decoder's "same patch" rule, per row.

    The keys live in a preallocated buffer, written in place: a windowed cache is a ring
    (position p in slot p % window; attention does not depend on the order of its keys, whose
    rotation carries their position), an unwindowed one doubles when full. Appending by
    concatenation copied the whole window at every step: ~40 % of a batched evaluation's time.
    """

    def __init__(self, window: int | None = None) -> None:
        self.window = window
        self.k: Tensor | None = None  # (B, H, capacity, D)
        self.v: Tensor | None = None
        self.seg: Tensor | None = None  # (B, capacity)
        self.length = 0  # positions seen

    def reset(self) -> None:
        self.k = self.v = self.seg = None
        self.length = 0

    @property
    def empty(self) -> bool:
        return self.length == 0

    def _allocate(self, k: Tensor, capacity: int, seg: Tensor | None) -> None:
        B, H, _, D = k.shape
        self.k, self.v = k.new_zeros(B, H, capacity, D), k.new_zeros(B, H, capacity, D)
        self.seg = None if seg is None else seg.new_zeros(B, capacity)

    def fill(self, k: Tensor, v: Tensor, seg: Tensor | None = None) -> None:
        """Hold (B, H, T, D) keys/values of T positions at once, as T appends would."""
        T = k.shape[2]
        cap = self.window or max(64, 2 * T)
        self._allocate(k, cap, seg)
        n = min(T, cap)
        slots = torch.arange(T - n, T, device=k.device) % cap
        self.k[:, :, slots], self.v[:, :, slots] = k[:, :, T - n :], v[:, :, T - n :]
        if seg is not None:
            self.seg[:, slots] = seg[:, T - n :]
        self.length = T

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]
            self.seg = None if self.seg is None else self.seg[rows]

    def append(
        self, k: Tensor, v: Tensor, seg: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Add (B, H, 1, D) keys/values; return all visible keys, values and a mask (or None).

        Many positions at once go to :meth:`fill` instead (only from empty)."""
        one_position(k)
        if self.k is None:
            self._allocate(k, self.window or 64, seg)
        elif self.window is None and self.length == self.k.shape[2]:
            grow = (0, 0, 0, self.length)
            self.k, self.v = F.pad(self.k, grow), F.pad(self.v, grow)
            self.seg = None if self.seg is None else F.pad(self.seg, (0, self.length))
        cap = self.k.shape[2]
        slot = self.length % cap
        self.k[:, :, slot : slot + 1] = k
        self.v[:, :, slot : slot + 1] = v
        if seg is not None:
            self.seg[:, slot : slot + 1] = seg[:, -1:]
        self.length += 1
        n = min(self.length, cap)
        mask = None if seg is None else (self.seg[:, :n] == seg[:, -1:])[:, None, None, :]
        return self.k[:, :, :n], self.v[:, :, :n], mask


def one_position(k: Tensor) -> None:
    if k.shape[2] != 1:
        raise ValueError("a cached attention step takes one position at a time")


class RowKVCache:
    """Keys/values for rows that advance at their own pace: each call appends one position to
    a chosen subset of rows (:meth:`rows`), and each row sees only its own filled length."""

    def __init__(self, batch: int) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = torch.zeros(batch, dtype=torch.long)

    def rows(self, index: Tensor) -> RowView:
        return RowView(self, index)

    def truncate(self, lengths: Tensor) -> None:
        """Keep only each row's first ``lengths`` (B,) positions: a prefill reads a padded grid
        of patches, of which only the finished ones belong in the cache (the rest are
        overwritten by later appends)."""
        self.length = lengths.to(self.length.device).clone()

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        self.length = self.length[rows.to(self.length.device)]
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]

    def _grow(self, k: Tensor, need: int) -> None:
        B = self.length.numel()
        if self.k is None:
            shape = (B, k.shape[1], max(16, need), k.shape[3])
            self.k, self.v = k.new_zeros(shape), k.new_zeros(shape)
            self.length = self.length.to(k.device)
        elif need > self.k.shape[2]:
            pad = max(need, 2 * self.k.shape[2]) - self.k.shape[2]
            self.k, self.v = (F.pad(t, (0, 0, 0, pad)) for t in (self.k, self.v))


class RowView:
    """The rows of a :class:`RowKVCache` that step in the current call."""

    def __init__(self, cache: RowKVCache, index: Tensor) -> None:
        self.cache, self.index = cache, index

    @property
    def empty(self) -> bool:
        return self.cache.k is None

    def fill(self, k: Tensor, v: Tensor, seg: Tensor | None = None) -> None:
        """Hold T positions of keys/values (len(index), H, T, D) for these rows of an empty
        cache; each row's length becomes T (see :meth:`RowKVCache.truncate`)."""
        c, idx = self.cache, self.index
        c._grow(k, k.shape[2])
        c.k[idx, :, : k.shape[2]], c.v[idx, :, : k.shape[2]] = k, v
        c.length[idx] = k.shape[2]

    def append(
        self, k: Tensor, v: Tensor, seg: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        one_position(k)
        c, idx = self.cache, self.index
        at = c.length[idx]
        n = int(at.max()) + 1 if idx.numel() else 1
        c._grow(k, n)
        c.k[idx, :, at], c.v[idx, :, at] = k[:, :, 0], v[:, :, 0]
        c.length[idx] = at + 1
        mask = torch.arange(n, device=k.device)[None, :] <= at[:, None]
        # index_select of the filled prefix: ~2x faster than advanced indexing here
        keys, values = (t[:, :, :n].index_select(0, idx) for t in (c.k, c.v))
        return keys, values, mask[:, None, None, :]


class CarriedWindow:
    """The keys/values of the ``window`` most recent positions of the previous segment, for a
    block that reads a whole segment at once (the memory's short-term tier, the latent over
    patches): each new position sees the carried ones and its own segment's, ``window`` back.

    ``k``/``v`` (B, H, W, D) are right-aligned with ``valid`` (B, W) marking real entries;
    after :meth:`append` they hold what the next segment carries: the last ``window`` of the
    first ``n_real`` (B,) new positions (the rest of each row is padding)."""

    empty = False  # never filled: it attends its segment itself

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor, n_real: Tensor) -> None:
        self.k, self.v, self.valid, self.n_real = k, v, valid, n_real

    def append(
        self, k: Tensor, v: Tensor, seg: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        B, H, T, D = k.shape
        W = self.valid.shape[1]
        K, V = torch.cat([self.k.to(k.dtype), k], 2), torch.cat([self.v.to(v.dtype), v], 2)
        i = torch.arange(T, device=k.device)[:, None]
        s = torch.arange(W, device=k.device)[None, :]
        j = torch.arange(T, device=k.device)[None, :]
        carried = (s > i)[None] & self.valid[:, None, :]  # carried slot s is W - s back
        own = ((j <= i) & (i - j < W))[None].expand(B, -1, -1)
        valid = torch.cat([self.valid, j.expand(B, -1) < self.n_real[:, None]], 1)
        idx = self.n_real[:, None] + torch.arange(W, device=k.device)[None, :]  # (B, W)
        gi = idx[:, None, :, None].expand(B, H, W, D)
        self.k, self.v, self.valid = K.gather(2, gi), V.gather(2, gi), valid.gather(1, idx)
        return K, V, torch.cat([carried, own], -1)[:, None]


Cache = KVCache | RowView | CarriedWindow
"""What a block can attend against besides its own positions: rows advancing together, rows
at their own pace, or the window carried from the previous segment."""


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, seg: Tensor | None) -> Tensor:
    """Causal attention where position t sees keys in (t - window, t], same ``seg`` only.

    Cost is O(T * window): the sequence is cut into chunks of ``window`` and each chunk attends
    to itself and the chunk before it, with a mask for the exact window and segment rule.
    Written out rather than through ``scaled_dot_product_attention``: its fast CPU kernel takes
    only the causal flag, and given a mask it falls back to a path ~1.5-2x slower than this.
    Every position sees at least itself, so no row of the softmax is all ``-inf``.
    """
    B, H, T, D = q.shape
    c = window
    n = math.ceil(T / c)
    pad = n * c - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    kp = F.pad(k, (0, 0, c, 0)).unfold(2, 2 * c, c).transpose(-1, -2)  # (B,H,n,2c,D)
    vp = F.pad(v, (0, 0, c, 0)).unfold(2, 2 * c, c).transpose(-1, -2)
    qq = q.view(B, H, n, c, D)
    qpos = torch.arange(n * c, device=q.device).view(n, c, 1)
    kpos = (torch.arange(n, device=q.device) * c - c).view(n, 1, 1) + torch.arange(
        2 * c, device=q.device
    ).view(1, 1, 2 * c)
    delta = qpos - kpos
    keep = ((delta >= 0) & (delta < c) & (kpos >= 0))[None, None]  # (1, 1, n, c, 2c)
    if seg is not None:
        # padded positions get their own segment ids so they only ever see themselves
        s = F.pad(seg, (0, pad), value=-1) if pad else seg
        sq = s.view(B, n, c, 1)
        sk = F.pad(s, (c, 0), value=-2).unfold(1, 2 * c, c).view(B, n, 1, 2 * c)
        keep = keep & (sq == sk)[:, None]
    scores = (qq @ kp.transpose(-1, -2)).float() * D**-0.5
    weights = scores.masked_fill(~keep, float("-inf")).softmax(-1).to(vp.dtype)
    return (weights @ vp).reshape(B, H, n * c, D)[:, :, :T]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim, self.window = heads, dim // heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        seg: Tensor | None = None,
        cache: Cache | None = None,
    ) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rotary(qkv[:2], *rope), qkv[2]
        if cache is not None and cache.empty and T > 1:
            # a prefill: attend as the uncached forward does (its masks, its O(T * window)
            # local attention), and leave the cache as T single steps would have
            cache.fill(k, v, seg)
            cache = None
        if cache is not None:
            # the cache holds exactly what the new positions may see: only segments, per-row
            # lengths or the carried window need a mask
            k, v, mask = cache.append(k, v, seg)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = local_attention(q, k, v, self.window, seg)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int | None = None) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim + 7) // 8 * 8
        self.attn_norm, self.attn = RMSNorm(dim), Attention(dim, heads, window)
        self.mlp_norm, self.mlp = RMSNorm(dim), SwiGLU(dim, hidden)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        seg: Tensor | None = None,
        cache: Cache | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, seg, cache)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """A run of blocks with shared rotary tables and a final norm."""

    def __init__(
        self, dim: int, heads: int, layers: int, mlp_ratio: float, window: int | None = None
    ) -> None:
        super().__init__()
        self.head_dim, self.window = dim // heads, window
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, window) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def new_caches(self) -> list[KVCache]:
        return [KVCache(self.window) for _ in self.blocks]

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        seg: Tensor | None = None,
        caches: list[KVCache] | list[RowView] | None = None,
    ) -> Tensor:
        """``positions``: (T,) shared by all rows, or (B, T) per row (cached steps only)."""
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        rope = rotary(self.head_dim, positions)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, seg, None if caches is None else caches[i])
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init: small normal weights, zero biases, residual projections scaled down."""
    n_blocks = max(1, sum(1 for m in module.modules() if isinstance(m, Block)))
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = (
                0.02 / math.sqrt(2 * n_blocks)
                if name.endswith(("proj.weight", "down.weight"))
                else 0.02
            )
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
