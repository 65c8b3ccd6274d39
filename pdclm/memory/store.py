"""The long-term memory (LSM) store: one entry per semantic phase, holding one unit-norm key
and one value per patch (row) of the phase, made by the reader from the patch's state, and
searched top-k over rows by inner product.

Rows of a batch are independent streams, each with its own entries; entries are kept as padded
tensors ``(B, N, ...)`` with a validity mask, so a training sequence keeps them differentiable
(the chosen rows' scores are recomputed from the stored keys, so stored keys get gradient;
without that the key space does not learn). Search is exact torch matmul while a
stream holds at most ``faiss_threshold`` entries; above it (never in training: faiss gives no
gradient) each stream searches its own faiss index over its rows: an inverted-file index over
inner products (``IndexIVFFlat``, approximate, ``nprobe`` lists per query) which supports
``remove_ids`` (eviction) unlike HNSW. Either way the scores of the chosen rows are recomputed
in torch, so both paths return the same kind of result.

Capacity: at most ``capacity`` entries (phases) per stream; beyond it the entries the router
decided not to write (write probability < 0.5) go first, then the least recently used (an
entry is "used" when written and whenever a query retrieves one of its rows). A phase is kept
or evicted whole.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

FIELDS = ("keys", "kmask", "values", "vmask", "logw", "valid", "used", "ids")


def decided_written(logw: Tensor) -> Tensor:
    """The router's write decision for phases of log write probability ``logw``: p >= 0.5."""
    return logw.detach() >= math.log(0.5)


class LongTermStore:
    def __init__(self, batch: int, capacity: int, faiss_threshold: int, nprobe: int) -> None:
        self.batch, self.capacity = batch, capacity
        self.faiss_threshold, self.nprobe = faiss_threshold, nprobe
        self.keys: Tensor | None = None  # (B, N, R, K) one unit-norm key per row
        self.kmask: Tensor | None = None  # (B, N, R) which rows can be found
        self.values: Tensor | None = None  # (B, N, L, D) the phase's patches' LSM values
        self.vmask: Tensor | None = None  # (B, N, L) which value slots are real patches
        self.logw: Tensor | None = None  # (B, N) log write probability (a retrieval bias)
        self.valid: Tensor | None = None  # (B, N) bool
        self.used: Tensor | None = None  # (B, N) clock of last write/retrieval (LRU)
        self.ids: Tensor | None = None  # (B, N) int64, increasing along N: faiss ids
        self.next_id = 0
        self._index: list = [None] * batch  # per-row faiss index (built lazily, eval only)

    @classmethod
    def of_keys(cls, keys: Tensor, faiss_threshold: int, nprobe: int) -> LongTermStore:
        """One stream holding just these keys (1, N, K), one row per entry, and no values: for
        lookup tests and the latency benchmark."""
        n = keys.shape[1]
        store = cls(1, n, faiss_threshold, nprobe)
        ones = torch.ones(1, n, 1, dtype=torch.bool)
        vals = torch.zeros(1, n, 1, 1)
        store.add(keys[:, :, None], ones, vals, ones, torch.zeros(1, n), ones[..., 0], 0)
        return store

    # ---------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[1]

    def counts(self) -> Tensor:
        """Valid entries per row (B,)."""
        if self.valid is None:
            return torch.zeros(self.batch, dtype=torch.long)
        return self.valid.sum(1)

    def detach(self) -> None:
        for name in ("keys", "values", "logw"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.detach())

    def select(self, rows: Tensor) -> None:
        for name in FIELDS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[rows.to(t.device)])
        self._index = [self._index[int(r)] for r in rows]
        self.batch = len(rows)

    # ---------------------------------------------------------------------------- write
    def add(
        self,
        keys: Tensor,
        kmask: Tensor,
        values: Tensor,
        vmask: Tensor,
        logw: Tensor,
        valid: Tensor,
        clock: int,
    ) -> None:
        """Append ``(B, n, ...)`` entries (``valid`` marks real ones; ``kmask`` their rows that
        can be found), then evict past capacity."""
        B, n = valid.shape
        if n == 0:
            return
        ids = self.next_id + torch.arange(B * n, device=valid.device).view(n, B).T
        self.next_id += B * n
        used = torch.full((B, n), clock, dtype=torch.long, device=valid.device)
        new = dict(
            keys=keys,
            kmask=kmask,
            values=values,
            vmask=vmask,
            logw=logw,
            valid=valid,
            used=used,
            ids=ids,
        )
        for name, t in new.items():
            old = getattr(self, name)
            setattr(self, name, t if old is None else torch.cat([old, t], dim=1))
        for b in range(B):  # keep faiss indexes in step
            if self._index[b] is not None:
                self._faiss_add(b, valid[b].nonzero()[:, 0] + (len(self) - n))
        self._compact()

    def _compact(self) -> None:
        """Drop invalid padding and the least recently used entries above capacity, keeping
        the order of what stays (ids stay increasing)."""
        counts = self.counts()
        keep_n = int(min(int(counts.max()), self.capacity))
        if keep_n == len(self):
            return
        N = len(self)
        # written (p >= 0.5) before undecided, then recent use; ties broken towards newer entries
        decided = decided_written(self.logw).long()
        score = torch.where(self.valid, decided * 2**41 + self.used, -(2**42))
        score = score * (N + 1) + torch.arange(N, device=score.device)
        keep = score.topk(keep_n, dim=1).indices.sort(dim=1).values  # (B, keep_n)
        dropped = torch.ones_like(self.valid).scatter(1, keep, False) & self.valid
        for b in range(self.batch):
            if self._index[b] is not None and dropped[b].any():
                self._index[b].remove_ids(self._row_ids(self.ids[b][dropped[b]]).cpu().numpy())
        for name in FIELDS:
            t = getattr(self, name)
            idx = keep.view(*keep.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            setattr(self, name, t.gather(1, idx))

    # ---------------------------------------------------------------------------- search
    @property
    def rows(self) -> int:
        """Rows per entry (R)."""
        return 0 if self.keys is None else self.keys.shape[2]

    def findable(self) -> Tensor:
        """(B, N * R) rows a search may return."""
        return (self.valid[..., None] & self.kmask).flatten(1)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` rows per query: scores (B, Q, k) (``-inf`` where a stream has fewer) and
        positions (B, Q, k) into this store's flattened (N * R) rows: entry ``pos // R``, row
        ``pos % R``."""
        B, Q, _ = queries.shape
        k = min(k, len(self) * self.rows)
        if k == 0:
            return queries.new_full((B, Q, 0), float("-inf")), queries.new_zeros(
                (B, Q, 0), dtype=torch.long
            )
        flat = self.keys.flatten(1, 2).to(queries.dtype)  # (B, N * R, K)
        ok_rows = self.findable()
        use_faiss = not torch.is_grad_enabled() or not self.keys.requires_grad
        use_faiss = use_faiss and int(self.counts().max()) > self.faiss_threshold
        if not use_faiss:
            s = torch.einsum("bqk,bnk->bqn", queries, flat)
            return s.masked_fill(~ok_rows[:, None, :], float("-inf")).topk(k, dim=-1)
        pos = torch.stack([self._faiss_search(b, queries[b], k) for b in range(B)])
        keys = flat.gather(1, pos.reshape(B, Q * k, 1).expand(-1, -1, flat.shape[-1]))
        scores = (queries[:, :, None, :] * keys.view(B, Q, k, -1)).sum(-1)
        ok = ok_rows.gather(1, pos.reshape(B, -1)).view(B, Q, k)
        return scores.masked_fill(~ok, float("-inf")), pos

    def touch(self, pos: Tensor, hit: Tensor, clock: int) -> None:
        """Mark the entries of retrieved rows ``pos`` (B, ...) where ``hit`` as used now (LRU)."""
        if self.used is None or pos.numel() == 0:
            return
        B = pos.shape[0]
        p, h = pos.reshape(B, -1) // self.rows, hit.reshape(B, -1)
        self.used = self.used.scatter(1, p, torch.where(h, clock, self.used.gather(1, p)))

    def _row_ids(self, ids: Tensor) -> Tensor:
        """faiss ids of all rows of entries ``ids`` (n,): entry id * R + row, increasing."""
        R = self.rows
        return (ids[:, None] * R + torch.arange(R, device=ids.device)).flatten()

    def _faiss_add(self, b: int, pos: Tensor) -> None:
        """Index the findable rows of entries ``pos`` of stream ``b``."""
        if len(pos):
            ok = self.kmask[b, pos].flatten()
            x = self.keys[b, pos].flatten(0, 1)[ok].detach().float().cpu().numpy()
            ids = self._row_ids(self.ids[b, pos])[ok].cpu().numpy()
            self._index[b].add_with_ids(np.ascontiguousarray(x), ids)

    def _faiss_search(self, b: int, q: Tensor, k: int) -> Tensor:
        if self._index[b] is None:
            ok = self.findable()[b]
            self._index[b] = build_ivf(self.keys[b].flatten(0, 1)[ok], self.nprobe)
            self._faiss_add(b, self.valid[b].nonzero()[:, 0])
        _, found = self._index[b].search(np.ascontiguousarray(q.detach().float().cpu().numpy()), k)
        found = torch.from_numpy(found).to(self.ids.device)
        R = self.rows
        entry = torch.searchsorted(self.ids[b].contiguous(), found.clamp(min=0) // R)
        pos = entry.clamp(max=len(self) - 1) * R + found.clamp(min=0) % R
        # faiss pads missing results with -1: point them at a row that search masks out
        return torch.where(found >= 0, pos, self._invalid_pos(b, pos))

    def _invalid_pos(self, b: int, like: Tensor) -> Tensor:
        bad = (~self.findable()[b]).nonzero()[:, 0]
        fill = int(bad[0]) if len(bad) else 0
        return torch.full_like(like, fill)

    # ---------------------------------------------------------------------------- persistence
    def tensors(self) -> dict[str, Tensor]:
        if self.keys is None:
            return {}
        return {f"lsm.{n}": getattr(self, n).detach().contiguous() for n in FIELDS}

    def load_tensors(self, tensors: dict[str, Tensor], next_id: int) -> None:
        for n in FIELDS:
            setattr(self, n, tensors.get(f"lsm.{n}"))
        self.batch = self.batch if self.keys is None else self.keys.shape[0]
        self.next_id = next_id
        self._index = [None] * self.batch  # rebuilt from the keys on the next large search


def build_ivf(keys: Tensor, nprobe: int):
    """An inner-product IVF index trained on (a sample of) these keys, ``nlist`` ~ sqrt(N)."""
    import faiss

    x = np.ascontiguousarray(keys.detach().float().cpu().numpy())
    n, d = x.shape
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).permutation(n)[: 64 * nlist]])
    faiss.extract_index_ivf(index).nprobe = min(nprobe, nlist)
    return index
