"""Atomic, verifiable checkpoints: safetensors weights + a separate training state.

A checkpoint is a folder ``step_XXXXXXX/`` holding ``model.safetensors`` (weights, loaded
without pickle), ``train_state.pt`` (optimizer and RNG tensors, loaded with
``weights_only=True``) and ``meta.json`` (step, extra state, SHA-256 of both files). It is
written under a temporary name and renamed into place, so a run killed mid-save leaves the
previous checkpoint as the latest one; a truncated or altered file fails its checksum with a
clear :class:`CheckpointError` instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match the model."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path) -> None:
    """All parameters and persistent buffers as safetensors (contiguous, no shared storage)."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights {path} do not match the model (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}); was it saved with another config?"
        )


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``ckpt_dir/step_{step}`` atomically and keep only the newest ``keep``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:07d}"
    tmp = ckpt_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    state = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "train_state.pt")
    meta = {
        "step": step,
        "extra": extra or {},
        "sha256": {n: sha256(tmp / n) for n in ("model.safetensors", "train_state.pt")},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of killed saves are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def read_meta(path: Path, verify: bool = True) -> dict[str, Any]:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable meta.json: {e}") from e
    if verify:
        for name, digest in meta["sha256"].items():
            f = path / name
            if not f.exists():
                raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
            if sha256(f) != digest:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: {name} does not match its checksum "
                    "(truncated or modified); delete it to resume from an earlier one"
                )
    return meta


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify, then load weights (and optimizer + RNG state if given). Returns meta.json."""
    meta = read_meta(path)
    load_weights(model, path / "model.safetensors")
    if optimizer is not None:
        state = torch.load(path / "train_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    return meta
