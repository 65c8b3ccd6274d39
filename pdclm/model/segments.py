"""Reading in segments with memory: the model's forward, generation, and persistence.

:func:`segment_forward` is the memory-enabled forward. It shares every stage with the plain
one (:meth:`PDCLM.features`): the same encoder, :meth:`PDCLM.patch_vectors`, latent blocks
(called with a :class:`~pdclm.layers.CarriedWindow` cache, the short-term tier) and
:meth:`PDCLM.decoder_input` and decoder; between two latent blocks it reads and writes the
memory tiers (:mod:`pdclm.memory.hmr`). It runs one segment against a
:class:`~pdclm.memory.hmr.MemoryState` and (if asked) carries the state on. Everything a
segment needs from the past comes from the state: the last symbols (so the encoder's local
window, the n-gram hashes and the patch rule see across the cut), the latent's window
(SSM), the slots (MSM), the store (LSM) and the last patch's latent. So reading a document in
one call or in several gives the same outputs whenever the cuts fall at the same places
(segment boundaries are forced patch and phase boundaries).

:class:`MemoryStream` is generation: the open segment is recomputed for every new symbol
(cost O(segment) per symbol rather than the plain model's O(1)) and committed when full, so
its outputs are exactly those of the training-time forward. Its state saves to and loads from
a folder (``--memory DIR``), so a model keeps its memory across processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from pdclm.config import ConfigError
from pdclm.io import write_json_atomic
from pdclm.layers import CarriedWindow, rotary
from pdclm.memory.hmr import (
    TIERS,
    MemoryState,
    commit_writes,
    new_state,
    read_memory,
)
from pdclm.memory.phases import phase_ends
from pdclm.pse.patcher import boundary_candidates, cap_starts, padded_patch_count

STATE_TENSORS = (
    "tail",
    "tail_entropy",
    "lat_valid",
    "prev_x",
    "prev_z",
    "dec_last",
    "dec_valid",
    "slots",
)
LAYER_LISTS = ("lat_k", "lat_v", "dec_k", "dec_v")
"""Per-layer carried keys/values, saved as ``<name>.<layer>``."""


def context_len(model) -> int:
    """Symbols before a segment that its first symbols' encoder states depend on."""
    e = model.pse_cfg.encoder
    return max(2, e.layers * (e.window - 1) + max(e.ngrams) - 1)


def segment_forward(
    model, tokens: Tensor, entropy: Tensor, state: MemoryState, commit: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoder states (B, T, d) for a segment's ``tokens`` (B, T + 1) (T inputs and the symbol
    after); ``entropy`` (B, T + 1) is their profile. With ``commit`` the state moves past the
    segment (only whole segments are committed)."""
    mem = model.memory
    cfg, pcfg = mem.cfg, model.pse_cfg.patcher
    B, N = tokens.shape
    T = N - 1
    if commit and cfg.segment != T:
        raise ValueError(f"only whole segments ({cfg.segment} symbols) are committed; got {T}")
    inputs = tokens[:, :-1]
    tail = tokens[:, :0] if state.tail is None else state.tail
    tail_ent = entropy[:, :0] if state.tail_entropy is None else state.tail_entropy
    E = tail.shape[1]
    cand = boundary_candidates(
        torch.cat([tail, tokens], 1),
        torch.cat([tail_ent.to(entropy.dtype), entropy], 1),
        pcfg,
        float(model.threshold),
    )[:, E:]
    starts = cap_starts(cand, pcfg.max_len)  # the segment start is always a patch start
    pid = starts.long().cumsum(1) - 1
    in_pid = pid[:, :T]
    n_real = in_pid.max(1).values + 1
    P = padded_patch_count(int(n_real.max()))

    h = model.encoder.hidden(torch.cat([tail, inputs], 1))[:, E:]
    x = model.patch_vectors(h, in_pid, P)
    ends = phase_ends(
        inputs, starts, entropy, n_real, P, cfg.max_phase, cfg.phase_entropy, cfg.segment == T
    )
    lat = model.latent
    rope = rotary(lat.head_dim, state.npatch[:, None] + torch.arange(P, device=x.device))
    at = cfg.layer if cfg.layer >= 0 else len(lat.blocks) // 2
    W, H = cfg.window, lat.blocks[0].attn.heads
    stats: dict[str, Tensor] = {}
    carried = cfg.ssm and bool(state.lat_k)
    pvalid = state.lat_valid if carried else torch.zeros(B, W, dtype=torch.bool, device=x.device)
    empty = x.new_zeros(B, H, W, lat.head_dim)
    new_k, new_v, writes, valid = [], [], {}, pvalid
    for i, block in enumerate(lat.blocks):
        if i == at:
            x, writes = read_memory(mem, x, ends, n_real, state, commit, stats)
        pk, pv = (state.lat_k[i], state.lat_v[i]) if carried else (empty, empty)
        window = CarriedWindow(pk, pv, pvalid, n_real)
        x = block(x, rope, cache=window)
        new_k.append(window.k)
        new_v.append(window.v)
        valid = window.valid
    z = lat.norm(x)
    prev_z = model.bos_latent.expand(B, -1) if state.prev_z is None else state.prev_z
    target_pid = pid[:, 1:]
    dec_in = model.decoder_input(h, z, prev_z, target_pid)
    dec_windows = None
    if model.decoder_crosses_patches:  # carry each decoder layer's window of keys/values
        dec_windows = decoder_windows(model, state, B, T, x.device)
        positions = state.pos + torch.arange(T, device=x.device)  # absolute: carried keys
        out = model.decoder(dec_in, positions, caches=dec_windows)  # keep their rotation
    elif state.dec_last is None:
        out = model.decoder(dec_in, seg=target_pid)
    else:  # the previous segment's last position predicted this segment's first symbol: it
        # belongs to this segment's first patch, so the decoder sees it again
        seg = F.pad(target_pid, (1, 0), value=0)
        out = model.decoder(
            torch.cat([state.dec_last[:, None].to(dec_in.dtype), dec_in], 1), seg=seg
        )
        out = out[:, 1:]

    if commit:
        state.pos += T
        state.tail = torch.cat([tail, inputs], 1)[:, -context_len(model) :]
        state.tail_entropy = torch.cat([tail_ent.to(entropy.dtype), entropy[:, :T]], 1)[
            :, -context_len(model) :
        ]
        if cfg.ssm:
            state.lat_k, state.lat_v, state.lat_valid = new_k, new_v, valid
        state.prev_z = z.gather(1, (n_real - 1)[:, None, None].expand(-1, 1, z.shape[-1]))[:, 0]
        commit_writes(state, writes, n_real)
        state.dec_last = dec_in[:, -1]
        if dec_windows is not None:
            state.dec_k = [w.k for w in dec_windows]
            state.dec_v = [w.v for w in dec_windows]
            state.dec_valid = dec_windows[0].valid
        state.npatch = state.npatch + n_real
    return out, stats


def decoder_windows(model, state: MemoryState, batch: int, length: int, device: torch.device):
    """One :class:`CarriedWindow` per decoder block for a segment of ``length`` positions,
    holding the last ``model.decoder.window`` positions' keys/values from the segments before
    (empty at the start)."""
    dec = model.decoder
    W, H = dec.window, dec.blocks[0].attn.heads
    n_real = torch.full((batch,), length, dtype=torch.long, device=device)  # every byte is real
    if state.dec_valid is None:
        empty = torch.zeros(batch, H, W, dec.head_dim, device=device)
        valid = torch.zeros(batch, W, dtype=torch.bool, device=device)
        return [CarriedWindow(empty, empty, valid, n_real) for _ in dec.blocks]
    return [
        CarriedWindow(k, v, state.dec_valid, n_real)
        for k, v in zip(state.dec_k, state.dec_v, strict=True)
    ]


def stream_features(model, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
    """The training/evaluation forward of a memory-enabled model: ``tokens`` (B, N) read in
    segments from a fresh state (gradient flows through all of them); states (B, N-1, d).
    In training, ``slot_carry`` of the rows start from the MSM slots the previous call left."""
    if entropy is None:
        entropy = model.entropy.profile(tokens)
    mem = model.memory
    state = new_state(model, tokens.shape[0], tokens.device)
    carried = mem.carried_slots
    if mem.training and carried is not None and carried.shape == state.slots.shape:
        keep = torch.rand(state.batch, device=tokens.device) < mem.cfg.slot_carry
        state.slots = torch.where(keep[:, None, None], carried.to(state.slots.dtype), state.slots)
    feats, stats = read_stream(model, tokens, entropy, state)
    if mem.training and mem.cfg.msm and mem.cfg.slot_carry > 0:
        mem.carried_slots = state.slots.detach()  # slots seeing many writes, as in a long read
    mem.last_stats = stats
    return feats


def read_stream(
    model, tokens: Tensor, entropy: Tensor, state: MemoryState
) -> tuple[Tensor, dict[str, float]]:
    """Read ``tokens`` (B, N) segment by segment on from ``state`` (committing every whole
    segment); the decoder states and the mean router statistics."""
    L = model.memory.cfg.segment
    N = tokens.shape[1]
    feats, sums, n = [], {}, 0
    for a in range(0, N - 1, L):
        b = min(a + L, N - 1)
        f, st = segment_forward(
            model, tokens[:, a : b + 1], entropy[:, a : b + 1], state, b - a == L
        )
        feats.append(f)
        for k, v in st.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
    return torch.cat(feats, 1), {k: v / max(1, n) for k, v in sums.items()}


class MemoryStream:
    """Generation with memory: one symbol per row per :meth:`push`, the open segment
    recomputed each time and committed when whole (same outputs as :func:`read_stream`)."""

    def __init__(self, model, batch: int = 1, state: MemoryState | None = None) -> None:
        self.model, self.batch = model, batch
        self.device = model.head.weight.device
        self.state = state or new_state(model, batch, self.device)
        self.pending = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        self.ctx = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        """Symbols before the open segment that its entropy windows read."""

    def select(self, rows: Tensor) -> None:
        rows = rows.to(self.device)
        self.state.select(rows)
        self.pending, self.ctx, self.batch = self.pending[rows], self.ctx[rows], len(rows)

    def push_one(self, token: int) -> Tensor:
        return self.push(torch.tensor([token], device=self.device))[0]

    @torch.no_grad()
    def prefill(self, tokens: Tensor) -> Tensor:
        """Read a prompt (B, T); logits (B, V) for the symbol after each row, as T pushes.

        Still symbol by symbol in effect (no one-pass prefill here): but a push that neither
        commits a segment nor ends the prompt changes nothing except ``pending``, so only
        segment ends and the last symbol are computed, one segment forward each.
        """
        tokens = tokens.to(self.device).long()
        if tokens.shape[1] == 0:
            raise ValueError("a prompt needs at least one symbol (BOS)")
        L = self.model.memory.cfg.segment
        for t in range(tokens.shape[1] - 1):
            if self.pending.shape[1] + 1 == L:
                self.push(tokens[:, t])
            else:
                self.pending = torch.cat([self.pending, tokens[:, t, None]], 1)
        return self.push(tokens[:, -1])

    @torch.no_grad()
    def push(self, tokens: Tensor) -> Tensor:
        """Append one symbol per row (B,); logits (B, V) for the symbol after each."""
        m = self.model
        self.pending = torch.cat([self.pending, tokens.to(self.device).long()[:, None]], 1)
        # the symbol after is unknown: a placeholder that only serves as a target position
        seg = torch.cat([self.pending, self.pending[:, -1:]], 1)
        ent = m.entropy.profile(torch.cat([self.ctx, seg], 1))[:, self.ctx.shape[1] :]
        commit = self.pending.shape[1] == m.memory.cfg.segment
        out, _ = segment_forward(m, seg, ent, self.state, commit)
        if commit:  # keep what the next symbols' entropies can still depend on
            self.ctx = torch.cat([self.ctx, self.pending], 1)[:, -m.entropy.reach :]
            self.pending = self.pending[:, :0]
        return m.head(out[:, -1])

    # ------------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> Path:
        """Write the whole state (all tiers, the open segment) to ``folder/memory.safetensors``
        plus ``memory.json``; atomic (written beside, then renamed)."""

        st = self.state
        folder.mkdir(parents=True, exist_ok=True)
        t: dict[str, Tensor] = {"pending": self.pending, "ctx": self.ctx, "npatch": st.npatch}
        for name in STATE_TENSORS:
            if getattr(st, name) is not None:
                t[name] = getattr(st, name)
        for name in LAYER_LISTS:
            for i, layer in enumerate(getattr(st, name)):
                t[f"{name}.{i}"] = layer
        if st.lsm is not None:
            t.update(st.lsm.tensors())
        tmp = folder / "memory.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in t.items()}, str(tmp))
        tmp.replace(folder / "memory.safetensors")
        meta = {
            "pos": st.pos,
            "batch": st.batch,
            "layers": {name: len(getattr(st, name)) for name in LAYER_LISTS},
            "next_id": st.lsm.next_id if st.lsm is not None else 0,
            "config": _fingerprint(self.model),
            "stored_phases": st.lsm.counts().tolist() if st.lsm is not None else [],
        }
        write_json_atomic(folder / "memory.json", meta)
        return folder

    @classmethod
    def load(cls, model, folder: Path) -> MemoryStream:
        """A stream that goes on exactly where the saved one stopped."""

        meta = json.loads((folder / "memory.json").read_text())
        if meta["config"] != _fingerprint(model):
            raise ConfigError(
                f"{folder} holds the memory of a model with a different memory config "
                f"({meta['config']}; this model: {_fingerprint(model)})"
            )
        dev = model.head.weight.device
        t = {k: v.to(dev) for k, v in load_file(str(folder / "memory.safetensors")).items()}
        stream = cls(model, meta["batch"])
        st = stream.state
        st.pos, st.npatch = meta["pos"], t["npatch"]
        for name in STATE_TENSORS:
            setattr(st, name, t.get(name))
        layers = meta["layers"]
        if isinstance(layers, int):  # saved before the decoder could carry a window
            layers = {"lat_k": layers, "lat_v": layers}
        for name, n in layers.items():
            setattr(st, name, [t[f"{name}.{i}"] for i in range(n)])
        if st.lsm is not None:
            st.lsm.load_tensors(t, meta["next_id"])
        stream.pending, stream.ctx = t["pending"], t["ctx"]
        return stream


def _fingerprint(model) -> dict:
    c = model.memory.cfg
    keys = ("segment", "window", "ssm", "msm", "lsm", "slots", "max_phase")
    return {k: getattr(c, k) for k in keys} | {"dim": model.memory.dim}


def router_stats_names() -> list[str]:
    return [f"read_{t}" for t in TIERS] + ["write_rate"]
