"""The Pattern-Driven Cognitive Language Model, top to bottom.

    symbols ─► PSE entropy profile ─► patch starts ─► encoder (per symbol) ─► pool per patch
                                                                                  │
                            latent transformer over patch vectors (causal across patches)
                                                                                  │
    next-symbol logits ◄── local decoder (within the current patch) ◄── latent state of the
                                                                        patches before it

Symbol t is predicted from (a) the encoder state of symbol t-1, (b) the latent state of the
last patch that ended before t, and (c) attention over the earlier symbols of t's own patch.
Because a patch start at t depends only on symbols before t, no output ever sees the future.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import ModelConfig, PSEConfig
from pdclm.model.layers import Stack, init_weights
from pdclm.pse.encoder import PatchEncoder
from pdclm.pse.entropy import EntropyModel, EntropyStream
from pdclm.pse.patcher import boundary_candidates, patch_ids, patch_starts
from pdclm.vocab import VOCAB_SIZE

LN2 = 0.6931471805599453
PATCH_BUCKET = 16
"""Patch counts are padded to a multiple of this: with few distinct shapes the CPU allocator
stops growing (peak RSS over a cpu-preset run: 3.2 GB unpadded, 1.3 GB padded)."""


def next_symbol_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy (nats) over all targets, and bits per byte over byte targets only."""
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    is_byte = (targets.reshape(-1) < 256).float()
    bpb = (ce * is_byte).sum() / is_byte.sum().clamp(min=1) / LN2
    return ce.mean(), bpb


class PDCLM(nn.Module):
    def __init__(self, pse: PSEConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.pse_cfg, self.cfg = pse, cfg
        d, D = pse.encoder.dim, cfg.latent.dim
        self.entropy = EntropyModel(pse.entropy, cfg.mlp_ratio)
        self.register_buffer("threshold", torch.tensor(float(pse.patcher.threshold)))
        self.encoder = PatchEncoder(pse.encoder, cfg.mlp_ratio)
        self.to_latent = nn.Linear(d, D, bias=False)
        self.latent = Stack(D, cfg.latent.heads, cfg.latent.layers, cfg.mlp_ratio)
        self.bos_latent = nn.Parameter(torch.zeros(D))
        self.from_latent = nn.Linear(D, d, bias=False)
        self.decoder = Stack(
            d, cfg.decoder.heads, cfg.decoder.layers, cfg.mlp_ratio, window=pse.patcher.max_len
        )
        self.head = nn.Linear(d, VOCAB_SIZE, bias=False)
        init_weights(self)
        nn.init.zeros_(self.encoder.pool_out.weight)  # pooling starts as a plain max-pool
        self.freeze_entropy()

    def freeze_entropy(self) -> None:
        """The entropy model is trained separately and never updated with the LM."""
        for p in self.entropy.parameters():
            p.requires_grad_(False)

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---------------------------------------------------------------------------- training path
    def patch(self, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
        """Patch starts (B, N); the profile is computed by the frozen entropy model if not given."""
        if entropy is None:
            entropy = self.entropy.profile(tokens)
        return patch_starts(tokens, entropy, self.pse_cfg.patcher, float(self.threshold))

    def forward(self, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
        """Logits (B, N-1, V) predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``."""
        B, N = tokens.shape
        inputs = tokens[:, :-1]
        pid = patch_ids(self.patch(tokens, entropy))  # (B, N) patch of every position
        in_pid = pid[:, :-1]
        n_patches = -(-(int(in_pid.max()) + 1) // PATCH_BUCKET) * PATCH_BUCKET

        h = self.encoder.hidden(inputs)  # (B, T, d)
        patches = self.encoder.pool(h, in_pid, n_patches)  # (B, P, d)
        z = self.latent(self.to_latent(patches))  # (B, P, D)
        z = torch.cat([self.bos_latent.expand(B, 1, -1).to(z.dtype), z], dim=1)

        target_pid = pid[:, 1:]  # the latent of patch p-1 serves the symbols of patch p
        ctx = z.gather(1, target_pid.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        x = h + self.from_latent(ctx)
        return self.head(self.decoder(x, seg=target_pid))

    # -------------------------------------------------------------------------- generation path
    def start_stream(self) -> Stream:
        return Stream(self)

    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        max_new: int,
        temperature: float = 1.0,
        top_k: int = 0,
        stop: tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ):
        """Yield sampled symbols one at a time (cached: each step costs O(1) patches)."""
        stream = self.start_stream()
        logits = None
        for tok in prompt:
            logits = stream.push(tok)
        for _ in range(max_new):
            nxt = sample_next(logits, temperature, top_k, generator)
            yield nxt
            if nxt in stop:
                return
            logits = stream.push(nxt)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> int:
    """One symbol from next-symbol logits: greedy at temperature 0, else top-k sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    scaled = logits.float() / temperature
    if top_k:
        kth = scaled.topk(min(top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return int(torch.multinomial(scaled.softmax(-1), 1, generator=generator))


@dataclass
class Stream:
    """Incremental state of one sequence: every cache the model needs to predict the next symbol.

    ``push(symbol)`` costs one encoder step, one entropy step, one decoder step and, only when a
    patch closes, one latent step. Its logits equal the full forward pass's.
    """

    model: PDCLM
    tokens: list[int] = field(default_factory=list)
    starts: list[bool] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)

    @torch.no_grad()
    def __post_init__(self) -> None:
        m = self.model
        self.entropy = EntropyStream(m.entropy)
        self.enc_caches = m.encoder.local.new_caches()
        self.lat_caches = m.latent.new_caches()
        self.dec_caches = m.decoder.new_caches()
        self.patch_h: list[Tensor] = []  # encoder states of the open patch
        self.n_patches = 0
        self.last_candidate = 0
        self.ngram_context = max(m.pse_cfg.encoder.ngrams) - 1
        self.ctx = m.from_latent(m.bos_latent.view(1, 1, -1))
        self.device = m.head.weight.device

    @torch.no_grad()
    def push(self, token: int) -> Tensor:
        """Append ``token``; return logits (V,) for the symbol after it."""
        m, i = self.model, len(self.tokens)
        self.tokens.append(token)
        if i == 0:
            self.starts.append(True)
            self.entropies.append(0.0)
        pos = torch.tensor([i], device=self.device)
        x = torch.tensor([[token]], device=self.device)
        history = torch.tensor([self.tokens[-1 - self.ngram_context : -1]], device=self.device)
        h = m.encoder.hidden(x, pos, self.enc_caches, history if i else None)  # (1, 1, d)
        if self.starts[i]:
            self.patch_h = []
        self.patch_h.append(h)

        # decide whether the next position starts a patch (depends only on symbols so far)
        self.entropies.append(self.entropy.push(token))
        tail = slice(max(0, i - 1), i + 2)
        toks = torch.tensor([self.tokens[tail] + [0]], device=self.device)
        ent = torch.tensor([self.entropies[tail]], device=self.device)
        cfg = m.pse_cfg.patcher
        if boundary_candidates(toks, ent, cfg, float(m.threshold))[0, -1]:
            self.last_candidate = i + 1
        start_next = (i + 1 - self.last_candidate) % cfg.max_len == 0
        self.starts.append(start_next)

        if start_next:  # the open patch is complete: one latent step
            ph = torch.cat(self.patch_h, dim=1)
            vec = m.encoder.pool(
                ph, torch.zeros(1, ph.shape[1], dtype=torch.long, device=self.device), 1
            )
            z = m.latent(
                m.to_latent(vec),
                torch.tensor([self.n_patches], device=self.device),
                caches=self.lat_caches,
            )
            self.n_patches += 1
            self.ctx = m.from_latent(z)
            for c in self.dec_caches:
                c.reset()
        out = m.decoder(h + self.ctx, pos, caches=self.dec_caches)
        return m.head(out)[0, -1]
