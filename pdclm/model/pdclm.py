"""The Pattern-Driven Cognitive Language Model, top to bottom.

    symbols ─► PSE entropy profile ─► patch starts ─► encoder (per symbol) ─► pool per patch
                                                                                  │
                            latent transformer over patch vectors (causal across patches)
                                                                                  │
    next-symbol logits ◄── local decoder (byte window) ◄── latent state of the patches before it

Symbol t is predicted from (a) the encoder state of symbol t-1, (b) the latent state of the
last patch that ended before t, and (c) attention over earlier symbols: those of t's own patch
(``model.decoder.window`` 0), or the last ``window`` symbols across patch boundaries, so the
decoder can copy bytes the patch vectors did not carry. Because a patch start at t depends
only on symbols before t, no output ever sees the future.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import ModelConfig, PSEConfig
from pdclm.layers import KVCache, RowKVCache, RowView, Stack, init_weights
from pdclm.memory.hmr import MemoryRouter
from pdclm.model.segments import MemoryStream, stream_features
from pdclm.pse.encoder import PatchEncoder
from pdclm.pse.entropy import EntropyModel, EntropyStream
from pdclm.pse.patcher import boundary_candidates, padded_patch_count, patch_ids, patch_starts
from pdclm.vocab import VOCAB_SIZE

LN2 = 0.6931471805599453


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
        self.decoder_crosses_patches = cfg.decoder.window > 0
        self.decoder = Stack(
            d,
            cfg.decoder.heads,
            cfg.decoder.layers,
            cfg.mlp_ratio,
            window=cfg.decoder.window or pse.patcher.max_len,
        )
        self.head = nn.Linear(d, VOCAB_SIZE, bias=False)
        init_weights(self)
        self.memory = None  # built after the rest: with or without it, the rest starts the same
        if cfg.memory.enabled:
            self.memory = MemoryRouter(cfg.memory, D, cfg.latent.heads)
            init_weights(self.memory)
            self.memory.reset_parameters()
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
        return self.head(self.features(tokens, entropy))

    def features(self, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
        """The decoder's output states (B, N-1, d): state j has read ``tokens[:, : j + 1]``."""
        if self.memory is not None:  # read in segments, carrying the memory tiers
            return stream_features(self, tokens, entropy)
        return self.read(tokens, entropy).out

    def read(
        self, tokens: Tensor, entropy: Tensor | None = None, caches: StreamCaches | None = None
    ) -> Read:
        """The plain forward, with what a generation stream keeps from it. Given empty
        ``caches`` (a :meth:`Stream.prefill`), every stage also fills its caches as reading
        the inputs one symbol at a time would have: one code path for training and prompts."""
        enc, lat, dec = caches or (None, None, None)
        B, N = tokens.shape
        inputs = tokens[:, :-1]
        pid = patch_ids(self.patch(tokens, entropy))  # (B, N) patch of every position
        in_pid = pid[:, :-1]
        n_patches = padded_patch_count(int(in_pid.max()) + 1)

        h = self.encoder.hidden(inputs, caches=enc)  # (B, T, d)
        z = self.latent(self.patch_vectors(h, in_pid, n_patches), caches=lat)  # (B, P, D)
        target_pid = pid[:, 1:]  # the latent of patch p-1 serves the symbols of patch p
        x = self.decoder_input(h, z, self.bos_latent.expand(B, -1), target_pid)
        seg = None if self.decoder_crosses_patches else target_pid
        return Read(self.decoder(x, seg=seg, caches=dec), h, z, pid)

    # The two steps around the latent that the plain forward above and the memory-enabled
    # one (:func:`~pdclm.model.segments.segment_forward`) share.
    def patch_vectors(self, h: Tensor, pid: Tensor, n_patches: int) -> Tensor:
        """Each patch's pooled encoder states ``h`` (B, T, d), in the latent width (B, P, D)."""
        return self.to_latent(self.encoder.pool(h, pid, n_patches))

    def decoder_input(self, h: Tensor, z: Tensor, prev: Tensor, target_pid: Tensor) -> Tensor:
        """Per position, its encoder state plus the latent of the patch before its target's
        (``z`` (B, P, D) per patch; ``prev`` (B, D) serves the first patch)."""
        z = torch.cat([prev[:, None].to(z.dtype), z], dim=1)
        ctx = z.gather(1, target_pid.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        return h + self.from_latent(ctx)

    # -------------------------------------------------------------------------- generation path
    def start_stream(self, batch: int = 1) -> Stream:
        if self.memory is not None:
            return MemoryStream(self, batch)
        return Stream(self, batch)

    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        max_new: int,
        temperature: float = 1.0,
        top_k: int = 0,
        stop: tuple[int, ...] = (),
        generator: torch.Generator | None = None,
        stream=None,
    ):
        """Yield sampled symbols one at a time (cached: each step costs O(1) patches) after
        reading the prompt in one pass (:meth:`Stream.prefill`); a given ``stream`` (e.g. a
        loaded memory) goes on from where it is."""
        stream = stream or self.start_stream()
        logits = stream.prefill(torch.tensor([prompt], device=stream.device))[0]
        for _ in range(max_new):
            nxt = int(sample_next(logits, temperature, top_k, generator))
            yield nxt
            if nxt in stop:
                return
            logits = stream.push_one(nxt)


@torch.no_grad()
def complete(
    model: PDCLM,
    prompts: list[list[int]],
    max_new: int,
    stop: frozenset[int],
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    prefill: bool = True,
) -> list[list[int]]:
    """Continue every prompt (in one batched stream) until it samples a symbol in ``stop``
    (not included) or has ``max_new`` new symbols. The length all prompts share is read in
    one parallel pass (``prefill``; False reads it symbol by symbol, the same outputs); rows
    with shorter prompts then start sampling while longer ones are still being read."""
    stream = model.start_stream(len(prompts))
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # stream row j continues prompt live[j]
    sampled = [0] * len(prompts)
    shared = min(map(len, prompts)) if prefill else 0
    if shared:
        logits = stream.prefill(torch.tensor([p[:shared] for p in prompts]))
        sampled = sample_next(logits, temperature, top_k, generator).tolist()
    for t in range(shared, max(map(len, prompts)) + max_new):
        symbols, keep = [], []
        for j, r in enumerate(live):
            p = prompts[r]
            if t < len(p):
                symbols.append(p[t])
            elif sampled[j] in stop or len(out[r]) >= max_new:
                continue  # finished: leaves the batch
            else:
                out[r].append(sampled[j])
                symbols.append(sampled[j])
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):
            stream.select(torch.tensor(keep))
            live = [live[j] for j in keep]
        logits = stream.push(torch.tensor(symbols))
        sampled = sample_next(logits, temperature, top_k, generator).tolist()
    return out


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Symbols (...) from next-symbol logits (..., V): greedy at temperature 0, else top-k."""
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_k:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1).reshape(-1, scaled.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).view(scaled.shape[:-1])


class StreamCaches(NamedTuple):
    """Per-layer caches of the encoder, latent and decoder stacks, for :meth:`PDCLM.read`."""

    encoder: list[KVCache]
    latent: list[RowView]
    decoder: list[KVCache]


class Read(NamedTuple):
    """What :meth:`PDCLM.read` computed: decoder states (B, T, d), encoder states (B, T, d),
    latent states (B, P, D) and the patch id of every position including the target (B, T+1)."""

    out: Tensor
    h: Tensor
    z: Tensor
    pid: Tensor


class Stream:
    """Incremental state of B sequences that advance together, one symbol per row per push.

    A push costs one encoder, entropy and decoder step for every row and, for the rows whose
    patch closes, one latent step. Rows close patches at different steps, so the latent stack
    keeps a per-row cache. Its logits equal the full forward pass's, row by row. A prompt is
    read at once by :meth:`prefill`, the full forward filling the caches.
    """

    @torch.no_grad()
    def __init__(self, model: PDCLM, batch: int = 1) -> None:
        m = self.model = model
        self.batch, self.device = batch, m.head.weight.device
        self.entropy = EntropyStream(m.entropy)
        self.enc_caches = m.encoder.local.new_caches()
        self.lat_caches = [RowKVCache(batch) for _ in m.latent.blocks]
        self.dec_caches = m.decoder.new_caches()
        self.length = 0
        window = m.pse_cfg.patcher.max_len
        self.recent_h = torch.zeros(batch, 0, m.pse_cfg.encoder.dim, device=self.device)
        self.recent_tokens = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        self.recent_entropy = torch.zeros(batch, 0, device=self.device)
        self.ngram_context = max(m.pse_cfg.encoder.ngrams) - 1
        self.keep = max(window, self.ngram_context, 2)  # positions of history kept per row
        z = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.patch_start = z.clone()  # position where each row's open patch began
        self.last_candidate = z.clone()
        self.n_patches = z.clone()  # finished patches per row (= the open patch's id)
        self.start_now = torch.ones(batch, dtype=torch.bool, device=self.device)
        self.ctx = m.from_latent(m.bos_latent).expand(batch, 1, -1).clone()

    _ROW_STATE = (
        "recent_h",
        "recent_tokens",
        "recent_entropy",
        "patch_start",
        "last_candidate",
        "n_patches",
        "start_now",
        "ctx",
    )

    def select(self, rows: Tensor) -> None:
        """Keep only these rows, in this order: finished sequences stop costing anything."""
        rows = rows.to(self.device)
        self.batch = len(rows)
        self.entropy.select(rows)
        for c in [*self.enc_caches, *self.dec_caches, *self.lat_caches]:
            c.select(rows)
        for name in self._ROW_STATE:
            setattr(self, name, getattr(self, name)[rows])

    def push_one(self, token: int) -> Tensor:
        """Single-row convenience: logits (V,)."""
        return self.push(torch.tensor([token], device=self.device))[0]

    @torch.no_grad()
    def prefill(self, tokens: Tensor) -> Tensor:
        """Read a prompt (B, T) (rows of equal length) in one parallel pass, leaving every
        piece of state as T pushes would; return logits (B, V) for the symbol after each row.

        From a fresh stream only (the caches are filled from empty); a stream that has
        already read symbols pushes the prompt one symbol at a time instead.
        """
        tokens = tokens.to(self.device).long()
        if tokens.shape[1] == 0:
            raise ValueError("a prompt needs at least one symbol (BOS)")
        if self.length:
            for t in tokens.unbind(1):
                logits = self.push(t)
            return logits
        m, T, cfg = self.model, tokens.shape[1], self.model.pse_cfg.patcher
        ent = self.entropy.prefill(tokens)  # (B, T+1): the last is the symbol after's
        # the symbol after is unknown: a placeholder, read only as a target position (the
        # patch rule for position T reads the symbols before it)
        padded = F.pad(tokens, (0, 1))
        every = torch.arange(self.batch, device=self.device)
        caches = StreamCaches(
            self.enc_caches, [c.rows(every) for c in self.lat_caches], self.dec_caches
        )
        read = m.read(padded, ent, caches)
        self.n_patches = read.pid[:, T]  # patches closed before position T (its patch's id)
        for c in self.lat_caches:  # the open patch and the padding are not in them yet
            c.truncate(self.n_patches)
        z = torch.cat([m.bos_latent.expand(self.batch, 1, -1).to(read.z.dtype), read.z], 1)
        last = z.gather(1, self.n_patches[:, None, None].expand(-1, 1, z.shape[-1]))
        self.ctx = m.from_latent(last).to(self.ctx.dtype)

        starts = F.pad(read.pid.diff(dim=1) > 0, (1, 0), value=True)  # (B, T+1)
        idx = torch.arange(T + 1, device=self.device).expand_as(starts)
        cand = boundary_candidates(padded, ent, cfg, float(m.threshold))
        cand[:, 0] = True
        self.last_candidate = torch.where(cand, idx, 0).max(1).values
        self.patch_start = torch.where(starts[:, :T], idx[:, :T], 0).max(1).values
        self.start_now = starts[:, T]
        self.recent_h = read.h[:, -self.keep :]
        self.recent_tokens = tokens[:, -self.keep :]
        self.recent_entropy = ent[:, -3:]
        self.length = T
        return m.head(read.out[:, -1])

    @torch.no_grad()
    def push(self, tokens: Tensor) -> Tensor:
        """Append one symbol per row (B,); return logits (B, V) for the symbol after each."""
        m, i, cfg = self.model, self.length, self.model.pse_cfg.patcher
        tokens = tokens.to(self.device).long()
        self.length += 1
        self.patch_start = torch.where(self.start_now, i, self.patch_start)
        history = self.recent_tokens[:, -self.ngram_context :] if i else None
        pos = torch.tensor([i], device=self.device)
        h = m.encoder.hidden(tokens[:, None], pos, self.enc_caches, history)  # (B, 1, d)
        ent_next = self.entropy.push(tokens)
        self.recent_h = torch.cat([self.recent_h, h], 1)[:, -self.keep :]
        self.recent_tokens = torch.cat([self.recent_tokens, tokens[:, None]], 1)[:, -self.keep :]
        if i == 0:
            self.recent_entropy = torch.zeros(self.batch, 1, device=self.device)
        self.recent_entropy = torch.cat([self.recent_entropy, ent_next[:, None]], 1)[:, -3:]

        # does position i+1 start a patch? (depends only on the symbols up to i)
        toks = F.pad(self.recent_tokens[:, -2:], (0, 1))
        cand = boundary_candidates(toks, self.recent_entropy[:, -3:], cfg, float(m.threshold))
        self.last_candidate = torch.where(cand[:, -1], i + 1, self.last_candidate)
        self.start_now = (i + 1 - self.last_candidate) % cfg.max_len == 0

        closing = self.start_now.nonzero()[:, 0]
        if closing.numel():  # those rows' open patch is complete: one latent step for them
            n = self.recent_h.shape[1]
            offset = torch.arange(i + 1 - n, i + 1, device=self.device)
            outside = (offset[None, :] < self.patch_start[closing, None]).long()
            vec = m.encoder.pool(self.recent_h[closing], outside, 2)[:, :1]
            z = m.latent(
                m.to_latent(vec),
                self.n_patches[closing, None],
                caches=[c.rows(closing) for c in self.lat_caches],
            )
            self.ctx[closing] = m.from_latent(z).to(self.ctx.dtype)
        self.n_patches = self.n_patches + self.start_now.long()  # patch id of position i+1
        seg = None if m.decoder_crosses_patches else self.n_patches[:, None]
        out = m.decoder(h + self.ctx, pos, seg, caches=self.dec_caches)
        return m.head(out)[:, -1]
