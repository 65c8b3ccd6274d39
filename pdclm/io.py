"""Files written so that a kill at any moment loses nothing, and weights read without pickle.

Every file the project writes that another step reads goes through here: JSON and JSONL
written beside their final name and renamed over it, SHA-256 digests for verification, and
model weights as safetensors (:func:`save_weights`, :func:`load_weights`), whose loader
executes no code and names the keys that do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match the model."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside ``path``, flush to disk and rename over it: a kill at any moment leaves
    either the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, all or nothing."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def append_jsonl_atomic(path: Path, row: dict) -> None:
    """Add one JSON line to ``path`` by rewriting it atomically (a plain append can leave half
    a line)."""
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(row, ensure_ascii=False) + "\n").encode())


def save_weights(model: nn.Module, path: Path) -> None:
    """All parameters and persistent buffers as safetensors (contiguous, no shared storage)."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    load_state(model, state, path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load all of ``state`` into ``model``; a mismatch names the first differing keys."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights {source} do not match the model (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}); was it saved with another config?"
        )
