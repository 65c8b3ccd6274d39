"""The PSE entropy model and the bit-entropy profile.

A small causal byte model, trained first in Phase 1 and then frozen. Its next-symbol entropy
(in bits) at every position is the signal the patcher cuts on. It is always run with the
context window it was trained with: entropies computed past that window drift upward and turn
almost every byte into a boundary. The profile uses overlapping windows of ``context``
symbols with stride ``context/2``; the window that serves position t depends on t alone, so
the profile of a prefix never changes when bytes are appended (needed for generation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import EntropyConfig
from pdclm.layers import KVCache, Stack, init_weights
from pdclm.vocab import VOCAB_SIZE


def entropy_bits(logits: Tensor) -> Tensor:
    """Entropy in bits of the softmax of the last dimension (computed in fp32)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / torch.log(torch.tensor(2.0))


def window_start(t: int, context: int) -> int:
    """First input position of the window that predicts position t."""
    s = context // 2
    return 0 if t < 2 * s else (t // s - 1) * s


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyConfig, mlp_ratio: float = 8 / 3) -> None:
        super().__init__()
        self.context = cfg.context
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.stack = Stack(cfg.dim, cfg.heads, cfg.layers, mlp_ratio)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)
        init_weights(self)

    def forward(
        self, tokens: Tensor, positions: Tensor | None = None, caches: list[KVCache] | None = None
    ) -> Tensor:
        """Next-symbol logits (B, T, V); T must not exceed the trained context."""
        return self.head(self.stack(self.embed(tokens), positions, caches=caches))

    @torch.no_grad()
    def profile(self, tokens: Tensor, chunk: int = 32) -> Tensor:
        """Entropy in bits (B, N) of predicting symbol t from its window; position 0 gets 0."""
        B, N = tokens.shape
        W, S = self.context, self.context // 2
        n_windows = max(1, -(-(N - 2 * S) // S) + 1) if N > 2 * S else 1
        padded = (
            F.pad(tokens, (0, (n_windows - 1) * S + W - N))
            if (n_windows - 1) * S + W > N
            else tokens
        )
        windows = padded.unfold(1, W, S)[:, :n_windows].reshape(-1, W)  # (B*nw, W)
        ent = torch.cat([entropy_bits(self(w)) for w in windows.split(chunk)])
        ent = ent.view(B, n_windows, W)
        # window 0 serves targets 1..2S-1 (outputs 0..2S-2); window k serves kS+S..kS+2S-1
        parts = [tokens.new_zeros(B, 1, dtype=torch.float32), ent[:, 0, : 2 * S - 1]]
        if n_windows > 1:
            parts.append(ent[:, 1:, S - 1 : 2 * S - 1].reshape(B, -1))
        return torch.cat(parts, dim=1)[:, :N]


class EntropyStream:
    """Incremental profile for generation: entropy of the next position, one symbol per row at
    a time (rows advance together).

    Keeps a KV cache for the current window and rebuilds it when the serving window moves
    (every ``context/2`` symbols), so each value equals :meth:`EntropyModel.profile`'s.
    """

    def __init__(self, model: EntropyModel) -> None:
        self.model = model
        self.tokens: list[Tensor] = []  # one (B,) tensor per position
        self.start = 0
        self.caches = model.stack.new_caches()

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        self.tokens = [t[rows] for t in self.tokens[self.start :]]
        self.tokens[:0] = [rows.new_zeros(len(rows))] * self.start  # never read again
        for c in self.caches:
            c.select(rows)

    @torch.no_grad()
    def push(self, tokens: Tensor) -> Tensor:
        """Append one symbol per row (B,); return the entropy (bits, (B,)) of the next one."""
        self.tokens.append(tokens)
        t = len(self.tokens)  # the position being predicted
        s = window_start(t, self.model.context)
        if s != self.start:  # the serving window moved: rebuild its cache
            self.start = s
            self.caches = self.model.stack.new_caches()
            first = 0
        else:
            first = t - 1 - s
        logits = None
        for i in range(first, t - s):
            x = self.tokens[s + i][:, None]
            logits = self.model(x, torch.tensor([i], device=x.device), self.caches)
        return entropy_bits(logits[:, -1])

    @torch.no_grad()
    def prefill(self, tokens: Tensor) -> Tensor:
        """Read a prompt (B, T) into an empty stream at once, leaving it as T pushes would;
        return the profile (B, T + 1) of the prompt and of the symbol after it (the values
        the pushes would have returned, after a 0 for position 0)."""
        T = tokens.shape[1]
        self.tokens = list(tokens.unbind(1))
        self.start = window_start(T, self.model.context)
        self.caches = self.model.stack.new_caches()
        positions = torch.arange(T - self.start, device=tokens.device)
        self.model.stack(self.model.embed(tokens[:, self.start :]), positions, caches=self.caches)
        # the symbol after is unknown: a placeholder, never read by the entropy before it
        return self.model.profile(F.pad(tokens, (0, 1)))


@torch.no_grad()
def profile_long(model: EntropyModel, symbols: Tensor, segment: int = 1 << 16) -> Tensor:
    """Profile (N,) of one long 1-D stream, in segments, equal to ``model.profile`` on it all.

    Each segment starts at a multiple of ``context/2`` and is given the half-window before it,
    so every position is served by the same window as in a single pass.
    """
    S = model.context // 2
    segment = max(S, segment // S * S)
    out = []
    for a in range(0, symbols.numel(), segment):
        lo = max(0, a - S)
        part = symbols[lo : a + segment].long().unsqueeze(0)
        out.append(model.profile(part)[0, a - lo :])
    return torch.cat(out)
