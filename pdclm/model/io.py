"""Save and load a trained PD-CLM as a folder: ``config.json`` + ``model.safetensors`` (+ any
extra weights, such as Phase 3's reflection network) + ``checksums.json``.

A model folder is written whole or not at all (:func:`pdclm.io.atomic_folder`): a run killed
while saving or copying one leaves the previous folder, never a partial one that later
blocks a resume. Every file's SHA-256 is recorded and checked on load, so a truncated or
altered model fails with a clear :class:`~pdclm.io.CheckpointError` instead of loading
garbage; folders written before checksums existed still load. Under ``torchrun``, saving and
copying are collective: rank 0 writes, the other ranks wait for it.

``load_model`` accepts that folder, a run folder (it uses ``RUN/model``) or, with no path, the
newest run under ``runs/`` that has a model. ``pdclm export`` makes such a folder of a training
checkpoint (:func:`pdclm.train.checkpoint.export_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pdclm.config import Config, from_saved, to_dict
from pdclm.io import (
    CheckpointError,
    atomic_folder,
    copy_folder,
    load_weights,
    main_writes,
    save_weights,
    verify_folder,
    write_json_atomic,
)
from pdclm.model.pdclm import PDCLM

WEIGHTS = "model.safetensors"
REPAIR = (
    "restore it from a copy, or write it again from the last checkpoint of the phase that "
    "saved it (`pdclm export RUN/PHASE/ckpt --out FOLDER`)"
)
"""What to do about a model folder that fails its checksums."""


def save_model(
    model: PDCLM, cfg: Config, folder: Path, extra: dict[str, nn.Module] | None = None
) -> Path:
    """Write ``folder`` atomically with checksums; ``extra`` maps file names to more modules
    whose weights belong with the model. Collective under ``torchrun``: every rank calls it,
    rank 0 writes (every rank holds the same whole model)."""

    def write() -> None:
        with atomic_folder(folder) as tmp:
            save_weights(model, tmp / WEIGHTS)
            write_json_atomic(tmp / "config.json", to_dict(cfg))
            for name, module in (extra or {}).items():
                save_weights(module, tmp / name)

    main_writes(write)
    return folder


def copy_model(src: str | Path, dst: Path) -> Path:
    """``dst`` as a copy of the model in ``src`` (a model or run folder), verified and written
    atomically, unless ``dst`` already holds a model (a copy made before a restart is kept;
    the temporary folder of a copy killed midway is not a model and is redone). Collective
    under ``torchrun``: rank 0 copies, the others wait."""

    def write() -> None:
        if not is_model_dir(dst):
            copy_folder(find_model_dir(src), dst, REPAIR)

    main_writes(write)
    return dst


def is_model_dir(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / "config.json").is_file()


def find_model_dir(path: str | Path | None) -> Path:
    if path is None:
        runs = sorted(Path("runs").glob(f"*/model/{WEIGHTS}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise FileNotFoundError(
                "no trained model found under runs/; pass --ckpt RUN_DIR (run `pdclm run` first)"
            )
        return runs[-1].parent
    p = Path(path)
    for cand in (p, p / "model"):
        if is_model_dir(cand):
            return cand
    raise FileNotFoundError(
        f"{p} holds no model (expected config.json + {WEIGHTS} in it or in its model/ folder)"
    )


def load_model(path: str | Path | None = None) -> tuple[PDCLM, Config]:
    """The model in ``path`` (see :func:`find_model_dir`), its files checked against their
    checksums first when the folder has them."""
    folder = find_model_dir(path)
    verify_folder(folder, REPAIR)
    try:
        cfg = from_saved(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {e}; {REPAIR}") from e
    model = PDCLM(cfg.pse, cfg.model)
    load_weights(model, folder / WEIGHTS)
    return model.eval(), cfg
