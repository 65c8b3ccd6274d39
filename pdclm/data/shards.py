"""Reading prepared shards, per-shard entropy profiles stored beside them, and batch sampling.

A profile ``profile-<tag>/<shard>.f16`` has a record ``<shard>.sha256`` naming the shard
content it was computed from (a stale one is recomputed); each is its own file, so several
processes can fill one profile folder at once, each its own share of shards.

Shards are memory-mapped, so a corpus larger than RAM costs nothing to open. A batch is a pure
function of ``(seed, step)``: resuming training at step ``k`` sees exactly the batches an
uninterrupted run would have seen, with no sampler state to checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pdclm.data.ingest import SPLITS, DataError, read_manifest
from pdclm.io import atomic_write

Batch = tuple[np.ndarray, np.ndarray | None]


def _complete_manifest(data_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise DataError(f"{data_dir} has no prepared data (no manifest.json); run `pdclm prepare`")
    if not manifest.get("complete"):
        raise DataError(
            f"{data_dir} is only partly prepared; run `pdclm prepare` again to finish it"
        )
    return manifest


def profile_dir(data_dir: str | Path, tag: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise ValueError(f"profile tag must be letters, digits, '_', '.' or '-'; got {tag!r}")
    return Path(data_dir) / f"profile-{tag}"


def _profile_path(folder: Path, shard_name: str, suffix: str = ".f16") -> Path:
    """The profile of a shard, or with ``suffix=".sha256"`` its record."""
    return folder / (Path(shard_name).stem + suffix)


def _profile_valid(folder: Path, shard: dict[str, Any]) -> bool:
    path, record = (
        _profile_path(folder, shard["name"]),
        _profile_path(folder, shard["name"], ".sha256"),
    )
    return (
        record.is_file()
        and record.read_text() == shard["sha256"]
        and path.is_file()
        and path.stat().st_size == 2 * shard["n_symbols"]
    )


class ShardSet:
    """One split of a prepared folder, memory-mapped."""

    def __init__(self, data_dir: Path, split: str, manifest: dict[str, Any]):
        self.data_dir = data_dir
        self.split = split
        self.entries = [s for s in manifest["shards"] if s["split"] == split]
        self.names: list[str] = [s["name"] for s in self.entries]
        self.shards: list[np.memmap] = [
            np.memmap(data_dir / n, dtype=np.uint16, mode="r") for n in self.names
        ]
        self.n_symbols: int = sum(len(s) for s in self.shards)
        self.n_bytes: int = manifest["totals"][split]["bytes"]

    @classmethod
    def open(cls, data_dir: str | Path, split: str) -> ShardSet:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        data_dir = Path(data_dir)
        manifest = _complete_manifest(data_dir)
        entries = [s for s in manifest["shards"] if s["split"] == split]
        if not entries:
            hint = (
                " (data.val_fraction is 0 or the corpus is one document)" if split == "val" else ""
            )
            raise DataError(f"{data_dir} has no {split} shards{hint}")
        for s in entries:
            path = data_dir / s["name"]
            if not path.is_file() or path.stat().st_size != 2 * s["n_symbols"]:
                raise DataError(
                    f"{path} is missing or truncated; run `pdclm prepare` again to rebuild it"
                )
        return cls(data_dir, split, manifest)

    def profile(self, tag: str) -> list[np.memmap] | None:
        """Per-symbol float16 entropy profiles of every shard, or None unless all are present."""
        folder = profile_dir(self.data_dir, tag)
        if not all(_profile_valid(folder, s) for s in self.entries):
            return None
        return [
            np.memmap(_profile_path(folder, s["name"]), dtype=np.float16, mode="r")
            for s in self.entries
        ]


def write_profiles(
    data_dir: str | Path,
    tag: str,
    compute: Callable[[np.ndarray], np.ndarray],
    *,
    progress: bool = True,
    share: tuple[int, int] = (0, 1),
) -> None:
    """Store ``compute(symbols)`` (one value per symbol) as float16 beside every shard.

    Profiles are written one shard at a time, atomically; valid ones are skipped, so an
    interrupted run resumes and a finished one is a no-op. With ``share=(k, n)`` this process
    computes only every n-th missing profile from the k-th (n ranks split the work).
    """
    data_dir = Path(data_dir)
    manifest = _complete_manifest(data_dir)
    folder = profile_dir(data_dir, tag)
    folder.mkdir(exist_ok=True)
    shards = manifest["shards"]
    k, n = share
    todo = [s for s in shards if not _profile_valid(folder, s)][k::n]
    total = sum(s["n_symbols"] for s in shards)
    with tqdm(
        total=total,
        initial=total - sum(s["n_symbols"] for s in todo),
        unit="sym",
        unit_scale=True,
        desc=f"profile {tag}",
        disable=not progress,
    ) as bar:
        for s in todo:
            symbols = np.fromfile(data_dir / s["name"], dtype=np.uint16)
            values = np.asarray(compute(symbols))
            if values.shape != symbols.shape:
                raise ValueError(
                    f"profile '{tag}': compute returned shape {values.shape} for shard "
                    f"{s['name']} of shape {symbols.shape}"
                )
            atomic_write(_profile_path(folder, s["name"]), values.astype(np.float16).tobytes())
            atomic_write(_profile_path(folder, s["name"], ".sha256"), s["sha256"].encode())
            bar.update(s["n_symbols"])


class BatchSampler:
    """Random windows of ``seq_len + 1`` symbols (inputs and shifted targets in one array)."""

    def __init__(
        self, shards: ShardSet, seq_len: int, batch: int, seed: int, profile_tag: str | None = None
    ):
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch, seed
        self.window = seq_len + 1
        keep = [i for i, s in enumerate(shards.shards) if len(s) >= self.window]
        if not keep:
            raise DataError(
                f"the {shards.split} split of {shards.data_dir} ({shards.n_symbols} symbols; "
                f"largest shard {max(len(s) for s in shards.shards)}) is smaller than one "
                f"sequence of {self.window} symbols; lower train.seq_len or add data"
            )
        self.shards = [shards.shards[i] for i in keep]
        self.profiles: list[np.memmap] | None = None
        if profile_tag is not None:
            profiles = shards.profile(profile_tag)
            if profiles is None:
                raise DataError(
                    f"{shards.data_dir} has no complete entropy profile '{profile_tag}' "
                    f"for its {shards.split} shards; compute it first"
                )
            self.profiles = [profiles[i] for i in keep]
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.n_starts = lengths - self.window + 1
        self.p = lengths / lengths.sum()

    def _windows(self, which: np.ndarray, starts: np.ndarray) -> Batch:
        w = self.window
        x = np.stack([self.shards[k][s : s + w] for k, s in zip(which, starts, strict=True)])
        ent = None
        if self.profiles is not None:
            ent = np.stack(
                [self.profiles[k][s : s + w] for k, s in zip(which, starts, strict=True)]
            )
            ent = ent.astype(np.float32)
        return x.astype(np.int64), ent

    def batch(self, step: int, rows: slice = slice(None)) -> Batch:
        """Rows ``rows`` of the batch of training step ``step``; the batch depends only on
        ``(seed, step)``, and only the asked rows are read (each rank reads its own)."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.shards), size=self.batch_size, p=self.p)
        starts = rng.integers(0, self.n_starts[which])
        return self._windows(which[rows], starts[rows])

    def fixed_batches(self, n: int) -> list[Batch]:
        """``n`` batches at evenly spaced offsets across all shards; the same on every call."""
        k = n * self.batch_size
        ends = np.cumsum(self.n_starts)
        spots = ((np.arange(k) + 0.5) * ends[-1] / k).astype(np.int64)
        which = np.searchsorted(ends, spots, side="right")
        starts = spots - (ends[which] - self.n_starts[which])
        b = self.batch_size
        return [
            self._windows(which[i * b : (i + 1) * b], starts[i * b : (i + 1) * b]) for i in range(n)
        ]
