"""Hierarchical Memory Router (HMR): short-, medium- and long-term memory, routed per phase.

With ``model.memory.enabled`` the model reads its input in segments of ``segment`` symbols and
carries a :class:`MemoryState` from one segment to the next, in training (truncated
backpropagation through all segments of a training sequence), evaluation and generation:

- **SSM** (short-term): the latent transformer's self-attention over a sliding window of the
  ``window`` most recent patches, with each layer's keys/values of the last window carried
  across segments. Exact and cheap. (Off: the latent sees only its own segment.)
- **MSM** (medium-term): ``slots`` recurrent memory slots, written at every phase end with a
  gated update (attention picks the slots a phase writes to, a learned gate per slot decides
  how much of the old content stays) and read by attention. Recurrent slots rather than a
  compressive memory: the size is fixed however long the input, and the write is an ordinary
  differentiable recurrence learnt through the segments of a training sequence; compressive
  (linear-attention) memories were reported to stall with their mixing gates at 0.5.
- **LSM** (long-term): a :class:`~pdclm.memory.store.LongTermStore` with one entry per
  finished phase: the phase's patch states, each patch a row keyed by itself and holding the
  patch that followed it in the phase. Every patch sends one query (all of a segment's
  queries go to the store in one batched top-k search) and attends over the ``top_k`` rows
  most like it (``eval_top_k`` outside training): a patch that matches a stored one reads
  what came next there. Queries and keys share one projection and are scored by cosine, so
  the match works from the start. Phases of
  the current training sequence stay differentiable, and the rows of the current segment's
  finished phases are candidates for the patches of later phases of the same segment
  (in-window recall trains the key space). Entries are written, kept and evicted per phase.
  (An earlier version recalled whole phases by one learned key per phase, queried from the
  last patch before the phase: with as many candidate phases as ``top_k`` at training length
  nothing taught it to rank them, and passkey accuracy fell to near chance at 4x.)
- **Router**: per phase, a softmax gate over the tiers (``p_ssm + p_msm + p_lsm = 1``) made from
  the same last patch, and a write probability per finished phase. The write logit receives
  the gradient that a bias on the phase's retrieval scores would (would recalling this phase
  more have helped?) but adds nothing to them, so it learns which phases are worth keeping
  and cannot shut the store; every phase is stored, in training and evaluation alike, and the
  decision (``p >= 0.5``) decides what the store keeps when it is full: undecided phases are
  evicted before written ones. (Two earlier rules failed in passkey training: dropping phases
  below 0.5 at evaluation only read another store than the one trained, and a real log-p
  bias let the router close the store, write rate 0.00 within 250 steps.) The SSM's read
  is the latent's own windowed attention, already in the residual stream: the gate's SSM share
  is the part of the phase that reads no further memory; it starts high (``ssm_bias``), so the
  model starts as a plain local model and learns to open the other tiers.

Ablations: ``ssm``/``msm``/``lsm`` switch tiers off; ``router=equal`` mixes the tiers that are
on with fixed equal weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.config import MemoryConfig
from pdclm.layers import RMSNorm
from pdclm.memory.store import LongTermStore, decided_written

TIERS = ("ssm", "msm", "lsm")


@dataclass
class MemoryState:
    """Everything carried from one segment to the next for a batch of B streams."""

    batch: int
    pos: int = 0
    """Symbols read so far (all rows advance together, a whole segment at a time)."""
    npatch: Tensor | None = None  # (B,) patches so far (the latent's rotary positions)
    tail: Tensor | None = None  # (B, E) last symbols (encoder and patcher context)
    tail_entropy: Tensor | None = None  # (B, E) their entropies
    lat_k: list[Tensor] = field(default_factory=list)  # per latent layer (B, H, W, hd)
    lat_v: list[Tensor] = field(default_factory=list)
    lat_valid: Tensor | None = None  # (B, W)
    prev_x: Tensor | None = None  # (B, D) memory-layer input at the last patch
    prev_z: Tensor | None = None  # (B, D) latent output of the last patch
    dec_last: Tensor | None = None  # (B, d) decoder input of the last position
    dec_k: list[Tensor] = field(default_factory=list)  # per decoder layer (B, h, W, hd), when
    dec_v: list[Tensor] = field(default_factory=list)  # the decoder's window crosses patches
    dec_valid: Tensor | None = None  # (B, W)
    slots: Tensor | None = None  # (B, M, D)
    lsm: LongTermStore | None = None

    def detach(self) -> MemoryState:
        """Cut the gradient (between training sequences)."""
        for name in ("tail_entropy", "lat_valid", "prev_x", "prev_z", "dec_last", "slots"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.detach())
        for name in ("lat_k", "lat_v", "dec_k", "dec_v"):
            setattr(self, name, [t.detach() for t in getattr(self, name)])
        if self.lsm is not None:
            self.lsm.detach()
        return self

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        names = ("npatch", "tail", "tail_entropy", "lat_valid", "prev_x", "prev_z", "dec_last")
        for name in (*names, "dec_valid", "slots"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[rows.to(t.device)])
        for name in ("lat_k", "lat_v", "dec_k", "dec_v"):
            setattr(self, name, [t[rows] for t in getattr(self, name)])
        if self.lsm is not None:
            self.lsm.select(rows)
        self.batch = len(rows)


class MemoryRouter(nn.Module):
    """The router and the MSM/LSM read and write parameters (the SSM is the latent's window)."""

    def __init__(self, cfg: MemoryConfig, dim: int, heads: int) -> None:
        super().__init__()
        self.cfg, self.dim, self.heads = cfg, dim, heads
        self.norm = RMSNorm(dim)
        # router: tier logits per phase and a write logit per finished phase
        self.router = nn.Linear(dim, len(TIERS))
        self.write = nn.Linear(dim, 1)
        # MSM
        self.slot_init = nn.Parameter(torch.zeros(cfg.slots, dim))
        self.slot_norm = RMSNorm(dim)
        self.msm_write_q = nn.Linear(dim, dim, bias=False)
        self.msm_cand = nn.Linear(dim, dim)
        self.msm_gate = nn.Linear(2 * dim, 1)
        self.msm_q = nn.Linear(dim, dim, bias=False)
        self.msm_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.msm_out = nn.Linear(dim, dim, bias=False)
        # LSM: one projection makes both the patch queries and the stored rows' keys
        self.read_log_temp = nn.Parameter(torch.tensor(math.log(10.0)))
        self.lsm_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.lsm_out = nn.Linear(dim, dim, bias=False)
        self.carried_slots: Tensor | None = None
        """MSM slots the last training forward left, per row (``memory.slot_carry``)."""

    def reset_parameters(self) -> None:
        """Run after the model's generic init: reads start silent, the gate favours the SSM,
        every phase starts written; the router learns at its own rate (``router_lr_scale``)
        and without weight decay. The read temperature is not a router parameter and learns at
        the base rate (at 10x it rose to 40 and the learnt passkey retrieval collapsed)."""
        for lin in (self.msm_out, self.lsm_out):
            nn.init.zeros_(lin.weight)
        with torch.no_grad():
            self.router.weight.zero_()
            self.router.bias.copy_(torch.tensor([self.cfg.ssm_bias, 0.0, 0.0]))
            self.write.weight.zero_()
            self.write.bias.fill_(self.cfg.write_bias)
            self.msm_gate.bias.fill_(-1.0)
            nn.init.normal_(self.slot_init, std=0.5)
            self.read_log_temp.fill_(math.log(10.0))
        for p in [*self.router.parameters(), *self.write.parameters()]:
            p.lr_scale = self.cfg.router_lr_scale  # read by train.loop.make_optimizer

    # ------------------------------------------------------------------------------ router
    def gate(self, src: Tensor) -> Tensor:
        """(B, F, 3) tier weights per phase from the last patch before it; sums to one, and
        every tier that is on keeps at least ``gate_floor``."""
        logits = self.router(self.norm(src)).float()
        on = torch.tensor([getattr(self.cfg, t) for t in TIERS], device=src.device)
        if self.cfg.router == "equal":
            logits = torch.zeros_like(logits)
        floor = self.cfg.gate_floor
        share = logits.masked_fill(~on, float("-inf")).softmax(-1)
        return share * (1 - floor * on.sum()) + floor * on

    # ------------------------------------------------------------------------------ MSM
    def msm_writes(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What phase summaries ``u`` (B, F, D) write into the slots: a query over the slots,
        a candidate, and the summary's part of the write-gate logit, for all phases at once
        (the update's loop over phases is then over the slots alone)."""
        w_u = self.msm_gate.weight[:, self.dim :]
        gate_u = F.linear(u, w_u, self.msm_gate.bias)[..., 0]
        return self.msm_write_q(u), torch.tanh(self.msm_cand(u)), gate_u

    def msm_update(
        self, slots: Tensor, query: Tensor, cand: Tensor, gate_u: Tensor, ended: Tensor
    ) -> Tensor:
        """Gated write of one phase (``query``/``cand`` (B, D), ``gate_u`` (B,) from
        :meth:`msm_writes`) into ``slots`` (B, M, D), in the rows where it ``ended`` (B,)."""
        s = self.slot_norm(slots)
        att = (torch.einsum("bmd,bd->bm", s, query) / math.sqrt(self.dim)).softmax(-1)
        w_s = self.msm_gate.weight[:, : self.dim]
        gate = torch.sigmoid(F.linear(s, w_s)[..., 0] + gate_u[:, None])
        z = (att * gate * ended[:, None].to(att.dtype))[..., None]
        return slots + z * (cand[:, None] - slots)

    def attend(self, x: Tensor, mem: Tensor, phid: Tensor) -> Tensor:
        """MSM read: multi-head attention of patches ``x`` (B, P, D) over the slots their
        phase reads, ``mem`` (B, F, M, D) for phase f. A zero "nothing" row is always visible.
        Slots are projected once per phase and gathered per patch."""
        B, P, D = x.shape
        H, hd = self.heads, D // self.heads
        Fn, M = mem.shape[1:3]
        kv = self.msm_kv(self.norm(mem)).view(B * Fn, M, 2, H, hd)
        rows = (phid + Fn * torch.arange(B, device=x.device)[:, None]).flatten()  # whole rows:
        kv = kv.reshape(B * Fn, -1).index_select(0, rows).view(B, P, M, 2, H, hd)  # fast
        q = self.msm_q(self.norm(x)).view(B, P, H, hd)
        score = torch.einsum("bphd,bpshd->bhps", q, kv[..., 0, :, :]).float() / math.sqrt(hd)
        att = F.pad(score, (1, 0), value=0.0).softmax(-1)[..., 1:]  # the "nothing" row
        y = torch.einsum("bhps,bpshd->bphd", att.to(x.dtype), kv[..., 1, :, :])
        return self.msm_out(y.reshape(B, P, D))

    def row_key(self, states: Tensor) -> Tensor:
        """LSM keys and queries (..., D) of patch states: the shared projection, unit-norm per
        head and scaled by 1/sqrt(heads), so an inner product is the mean cosine over heads."""
        D, H = self.dim, self.heads
        k = F.linear(self.norm(states), self.lsm_kv.weight[:D])
        k = F.normalize(k.view(*k.shape[:-1], H, D // H), dim=-1)
        return k.flatten(-2) / math.sqrt(H)

    def row_value(self, states: Tensor) -> Tensor:
        """LSM values (..., D) of patch states: what a recalled row hands the patch reading it.
        Made once per patch as it is read and stored with it, so a read gathers values instead
        of projecting each of its k recalled rows again (k times fewer FLOPs)."""
        return F.linear(self.norm(states), self.lsm_kv.weight[self.dim :])

    def recall(self, q: Tensor, keys: Tensor, values: Tensor, bias: Tensor) -> Tensor:
        """LSM read: patches with queries ``q`` (B, P, D, from :meth:`row_key`) attend over
        their k recalled rows, row i keyed by ``keys[..., i, :]`` (B, P, k, D, :meth:`row_key`
        of the stored patch) and holding :meth:`row_value` of the patch state that followed
        it, ``values`` (B, P, k, D); ``bias`` (B, P, k) is added to the scores (``-inf`` hides).
        A patch that matches a recalled patch reads what came after it there: the patch-level
        form of a nearest-neighbour LM's (context -> next token) memory (Khandelwal et al.,
        2020), so copying past the window is one lookup. As in a kNN-LM the match is a
        similarity: queries and keys share one projection and are scored by cosine at a
        learned temperature, so from the first step a patch attends to the stored patches most
        like it (with separate random query and key projections nothing matched, and no
        variant left chance in 1,300-3,200 passkey steps). Stored keys and values are those
        made from the stored states when they were read, with gradient within a training
        sequence (a fresh state per sequence: the same weights)."""
        B, P, D = q.shape
        H, hd = self.heads, D // self.heads
        q = q.view(B, P, H, hd)
        k = keys.view(*keys.shape[:3], H, hd)
        v = values.view(*values.shape[:3], H, hd)
        score = torch.einsum("bphd,bpshd->bhps", q, k).float() * (H * self.read_log_temp.exp())
        score = score + bias[:, None]
        att = F.pad(score, (1, 0), value=0.0).softmax(-1)[..., 1:]  # the "nothing" row
        y = torch.einsum("bhps,bpshd->bphd", att.to(v.dtype), v)
        return self.lsm_out(y.reshape(B, P, D))


def new_state(model, batch: int, device: torch.device) -> MemoryState:
    m = model.memory
    cfg = m.cfg
    lsm = LongTermStore(batch, cfg.capacity, cfg.faiss_threshold, cfg.nprobe) if cfg.lsm else None
    return MemoryState(
        batch=batch,
        npatch=torch.zeros(batch, dtype=torch.long, device=device),
        slots=m.slot_init[None].repeat(batch, 1, 1) if cfg.msm else None,
        lsm=lsm,
    )


# ---------------------------------------------------------------------------------- HMR read
def pool_rows(pool: Tensor, at: Tensor) -> Tensor:
    """Rows ``pool[b, at[b, ...]]`` (B, ..., C) of ``pool`` (B, N, C): one index_select over the
    flattened batch (its backward is one index_add, cheaper than advanced indexing's)."""
    B, N, C = pool.shape
    flat = (at + N * torch.arange(B, device=at.device).view(B, *[1] * (at.dim() - 1))).flatten()
    return pool.reshape(B * N, C).index_select(0, flat).view(*at.shape, C)


def read_memory(
    mem: MemoryRouter,
    x: Tensor,
    ends: Tensor,
    n_real: Tensor,
    state: MemoryState,
    commit: bool,
    stats: dict[str, Tensor],
) -> tuple[Tensor, dict]:
    """Add the routed MSM/LSM reads to patch states ``x`` (B, P, D); return the new x and
    what the segment writes (applied to ``state`` by the caller if ``commit``)."""
    cfg = mem.cfg
    B, P, D = x.shape
    dev = x.device
    pidx = torch.arange(P, device=dev)[None, :].expand(B, -1)
    real = pidx < n_real[:, None]
    start = F.pad(ends, (1, 0), value=True)[:, :-1]
    phid = (start.long().cumsum(1) - 1).masked_fill(~real, 0)  # padding joins phase 0
    n_ph = int(phid.max()) + 1
    # phase summaries (mean of the phase's patches), last patch of each phase, which ended
    onehot = F.one_hot(phid, n_ph).to(x.dtype) * real[..., None].to(x.dtype)  # (B, P, F)
    count = onehot.sum(1).clamp(min=1)
    u = torch.einsum("bpf,bpd->bfd", onehot, x) / count[..., None]
    ended = torch.zeros(B, n_ph, dtype=torch.bool, device=dev).scatter_reduce(
        1, phid, ends & real, reduce="amax"
    )
    last_pos = torch.where(ends & real, pidx, -1)
    last_pos = torch.full((B, n_ph), -1, device=dev).scatter_reduce(1, phid, last_pos, "amax")
    last_x = x.gather(1, last_pos.clamp(min=0)[..., None].expand(-1, -1, D))
    prev = state.prev_x if state.prev_x is not None else x.new_zeros(B, D)
    src = torch.cat([prev[:, None].to(x.dtype), last_x[:, :-1]], 1)  # (B, F, D) per phase
    gate = mem.gate(src)  # (B, F, 3)
    g = gate.gather(1, phid[..., None].expand(-1, -1, 3)).to(x.dtype)  # per patch
    writes: dict = {"x": x}
    out = torch.zeros_like(x)

    if cfg.msm:
        slots = [state.slots.to(x.dtype)]
        query, cand, gate_u = mem.msm_writes(u)
        for f in range(n_ph):  # the write of phase f is seen by phases after f
            w = query[:, f], cand[:, f], gate_u[:, f], ended[:, f]
            slots.append(mem.msm_update(slots[-1], *w))
        hist = torch.stack(slots[:-1], 1)  # (B, F, M, D): what phase f reads
        r = mem.attend(x, hist, phid)
        out = out + g[..., 1:2] * r
        writes["slots"] = slots[-1]

    if cfg.lsm:
        L = cfg.max_phase
        # the write decision reads the phase but does not shape its states: through the
        # states, its bias gradient (below) was ~35x the LM's gradient on text rows
        wlog = F.logsigmoid(mem.write(u.detach())[..., 0].float())  # (B, F)
        q = mem.row_key(x)  # (B, P, D): every patch's query, and its key as a row
        v = mem.row_value(x)  # (B, P, D): every patch's value as a row's successor
        # this segment's phases as store entries (B, F, L, ...) by slot in phase; padding
        # patches scatter into one spare slot past the end, dropped after
        slot_in_phase = (pidx - torch.where(start, pidx, 0).cummax(1).values).clamp(max=L - 1)
        flat = torch.where(real, phid * L + slot_in_phase, n_ph * L)

        def by_phase(t: Tensor) -> Tensor:
            C = t.shape[-1]
            out = t.new_zeros(B, n_ph * L + 1, C).scatter(1, flat[..., None].expand(-1, -1, C), t)
            return out[:, :-1].view(B, n_ph, L, C)

        vals, keys, vmask = by_phase(v), by_phase(q), by_phase(real[..., None])[..., 0]
        kmask = vmask & F.pad(vmask[..., 1:], (0, 1), value=False)  # rows with a successor
        # patch j as a row: keyed by itself, holding patch j + 1 of its phase; readable by
        # the patches of later phases once its phase has ended (in-window recall)
        succ_ok = F.pad((phid[:, 1:] == phid[:, :-1]) & real[:, 1:], (0, 1), value=False)
        row_ok = succ_ok & real & ended.gather(1, phid)
        ok_in = row_ok[:, None, :] & (phid[:, None, :] < phid[:, :, None])  # (B, P, P)
        s_in = torch.einsum("bpk,bjk->bpj", q, q).float().masked_fill(~ok_in, float("-inf"))
        top_k = cfg.top_k if mem.training or not cfg.eval_top_k else cfg.eval_top_k
        s_st, pos_st = (
            state.lsm.search(q.float(), top_k)
            if state.lsm is not None
            else (s_in[..., :0], s_in[..., :0].long())
        )
        k = min(top_k, s_in.shape[-1] + s_st.shape[-1])
        top_s, top_i = torch.cat([s_st, s_in], -1).topk(k, dim=-1)  # (B, P, k)
        n_st = s_st.shape[-1]
        from_store = top_i < n_st
        # every candidate row in one pool per field, the store's rows first, so the recalled
        # rows are one gather each (not a gather from each source and a select between them)
        st = state.lsm
        S = len(st) * st.rows if n_st else 0
        pool_key, pool_val, pool_logw = q, v, wlog.gather(1, phid)
        if S:
            pool_key = torch.cat([st.keys.flatten(1, 2).to(x.dtype), q], 1)
            pool_val = torch.cat([st.values.flatten(1, 2).to(x.dtype), v], 1)
            st_logw = st.logw[..., None].expand(-1, -1, st.rows).flatten(1)
            pool_logw = torch.cat([st_logw.to(wlog.dtype), pool_logw], 1)
            sp = pos_st.gather(2, top_i.clamp(max=n_st - 1))  # flat (entry * L + row)
        ip = (top_i - n_st).clamp(min=0, max=P - 1)
        at_key = S + ip  # row j's successor: row j + 1 of the same pool (kmask/succ_ok)
        at_succ = S + (ip + 1).clamp(max=P - 1)
        if S:
            at_key = torch.where(from_store, sp, at_key)
            at_succ = torch.where(from_store, (sp + 1).clamp(max=S - 1), at_succ)
        r_key, r_succ = pool_rows(pool_key, at_key), pool_rows(pool_val, at_succ)
        r_logw = pool_logw.gather(1, at_key.flatten(1)).view_as(at_key)
        # the write logit gets the gradient of a bias on its phase's rows but adds nothing
        # (value 0): it learns whether recalling the phase more would help, and cannot shut
        # the store (a real log-probability bias fell to write rate 0.00 within 250 steps)
        bias = torch.where(torch.isfinite(top_s), r_logw - r_logw.detach(), float("-inf"))
        r = mem.recall(q, r_key, r_succ, bias)
        out = out + g[..., 2:3] * r
        # every finished phase is stored; the write decision only orders eviction
        writes.update(keys=keys, kmask=kmask, vals=vals, vmask=vmask, wlog=wlog, ended=ended)
        if commit and S and not mem.training:
            state.lsm.touch(sp, from_store & torch.isfinite(top_s), state.pos)
        ew = ended.float()
        stats["write_rate"] = (decided_written(wlog).float() * ew).sum() / ew.sum().clamp(min=1)

    ew = ended.float()[..., None]
    share = (gate * ew).sum((0, 1)) / ew.sum().clamp(min=1)
    for t, name in enumerate(TIERS):
        stats[f"read_{name}"] = share[t]
    return x + out, writes


def commit_writes(state: MemoryState, writes: dict, n_real: Tensor) -> None:
    """Carry what this segment wrote into the state."""
    B = n_real.shape[0]
    last = (n_real - 1).clamp(min=0)
    x_last = writes["x"].gather(1, last[:, None, None].expand(-1, 1, writes["x"].shape[-1]))
    state.prev_x = x_last[:, 0]
    if "slots" in writes:
        state.slots = writes["slots"]
    if state.lsm is not None and "keys" in writes:
        state.lsm.add(
            writes["keys"],
            writes["kmask"],
            writes["vals"],
            writes["vmask"],
            writes["wlog"],
            writes["ended"],
            state.pos,
        )
    assert state.batch == B
