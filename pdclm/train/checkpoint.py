"""Atomic, verifiable checkpoints: one process writes safetensors, many write DCP shards.

A checkpoint is a folder ``step_XXXXXXX/`` with a ``meta.json`` (step, extra state). Written
by one process it holds ``model.safetensors`` (weights, loaded without pickle) and
``train_state.pt`` (optimizer and RNG tensors, loaded with ``weights_only=True``), and the
meta carries the SHA-256 of both: a truncated or altered file fails with a clear
:class:`CheckpointError` instead of loading garbage. Written by several ranks (DDP, FSDP) it
is a ``torch.distributed.checkpoint`` folder: each rank writes its own shards, and the
checkpoint loads on any number of ranks, or in one process (:func:`load_checkpoint`,
:func:`read_weights`). Either way it is written under a temporary name and renamed into place
only when complete, so a run killed mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pdclm.config import from_saved
from pdclm.dist import barrier, is_main, part
from pdclm.io import (
    CheckpointError,
    check_digests,
    fsync,
    load_state,
    load_weights,
    replace_folder,
    save_weights,
    sha256,
    write_json_atomic,
)
from pdclm.model.io import save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.parallel import is_fsdp

PREFIX = "step_"


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``ckpt_dir/step_{step}`` atomically and keep only the newest ``keep``."""
    final, tmp = _fresh_tmp(ckpt_dir, step)
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
        fsync(f)
    _publish(tmp, final, keep)
    return final


def _names(ckpt_dir: Path, step: int) -> tuple[Path, Path]:
    """The folder of step ``step`` and the temporary name it is written under."""
    final = ckpt_dir / f"{PREFIX}{step:07d}"
    return final, ckpt_dir / f".{final.name}.tmp"


def _fresh_tmp(ckpt_dir: Path, step: int) -> tuple[Path, Path]:
    """:func:`_names`, with an empty temporary folder (left-overs of a killed save go)."""
    final, tmp = _names(ckpt_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return final, tmp


def _publish(tmp: Path, final: Path, keep: int) -> None:
    """Rename the complete ``tmp`` to ``final`` (an older save of the same step is moved
    aside first, then removed) and keep only the newest ``keep`` checkpoints."""
    replace_folder(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ sharded (several ranks)


def is_sharded(path: Path) -> bool:
    """Written by several ranks with ``torch.distributed.checkpoint`` (its index file)."""
    return (path / ".metadata").is_file()


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Model (and optimizer) state keyed by parameter name, whatever wraps or shards the
    model: the layout that loads on any number of ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd, "rng_cpu": torch.get_rng_state()}


def save_sharded(
    ckpt_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Collective: every rank writes its shards of ``ckpt_dir/step_{step}`` (each file synced
    to disk); when all have finished, rank 0 adds ``meta.json`` and renames it into place."""
    import torch.distributed.checkpoint as dcp

    final, tmp = _names(ckpt_dir, step)
    if is_main():
        _fresh_tmp(ckpt_dir, step)
    barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=tmp)  # returns when all are written
    if is_main():
        meta = {"step": step, "extra": extra or {}, "format": "dcp", "ranks": part().world}
        write_json_atomic(tmp / "meta.json", meta)
        fsync(tmp / "meta.json")
        _publish(tmp, final, keep)
    barrier()
    return final


def _dcp_load(state: dict[str, Any], path: Path) -> None:
    """Fill ``state`` from a sharded checkpoint (a collective under several ranks)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full weights of a checkpoint of either kind, in this process, without a model."""
    read_meta(path)
    if not is_sharded(path):
        return load_file(str(path / "model.safetensors"))
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    index = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in index.items()
        if k.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    _dcp_load(state, path)
    return {k.removeprefix("model."): v for k, v in state.items()}


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
        advice = "delete it to resume from an earlier one"
        check_digests(path, meta.get("sha256", {}), f"checkpoint {path}", advice)
    return meta


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify, then load weights (and optimizer + RNG state if given). Returns meta.json.

    A sharded checkpoint loads into a model sharded or wrapped any way, on any number of
    ranks (a collective then), or into a plain model in one process."""
    meta = read_meta(path)
    if is_sharded(path):
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = _dcp_state(model, optimizer)
        _dcp_load(state, path)
        if optimizer is None:
            load_state(model, state["model"], path)
        else:
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
            torch.set_rng_state(state["rng_cpu"])
        return meta
    if is_fsdp(model):
        raise CheckpointError(
            f"{path} was written by one process; resume it with train.parallel=none or ddp "
            "(FSDP resumes from checkpoints written under torchrun)"
        )
    load_weights(model, path / "model.safetensors")
    if optimizer is not None:
        state = torch.load(path / "train_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    return meta


def export_checkpoint(ckpt: Path, out: Path | None = None) -> Path:
    """The PD-CLM of a training checkpoint as a model folder (default: ``<ckpt>-model``).

    ``ckpt`` is a ``step_...`` folder or a ``ckpt`` folder (its newest); the config comes from
    the run folder above it; the calibrated patch threshold travels in the weights."""
    step = latest_checkpoint(ckpt) or ckpt
    run = next((d for d in step.parents if (d / "config.json").is_file()), None)
    if run is None:
        raise FileNotFoundError(f"no run config.json above {step}; is it a run's checkpoint?")
    cfg = from_saved(json.loads((run / "config.json").read_text()))
    model = PDCLM(cfg.pse, cfg.model)
    try:
        load_state(model, read_weights(step), step)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (only PD-CLM checkpoints export)") from e
    cfg.pse.patcher.threshold = float(model.threshold)
    return save_model(model, cfg, out or step.with_name(step.name + "-model"))
