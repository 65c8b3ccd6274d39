"""Save and load a trained PD-CLM as a folder: ``config.json`` + ``model.safetensors``.

``load_model`` accepts that folder, a run folder (it uses ``RUN/model``) or, with no path, the
newest run under ``runs/`` that has a model. ``pdclm export`` makes such a folder of a training
checkpoint (:func:`pdclm.train.checkpoint.export_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pdclm.config import Config, from_dict, to_dict
from pdclm.io import load_weights, save_weights, write_json_atomic
from pdclm.model.pdclm import PDCLM


def save_model(model: PDCLM, cfg: Config, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "model.safetensors")
    write_json_atomic(folder / "config.json", to_dict(cfg))
    return folder


def find_model_dir(path: str | Path | None) -> Path:
    if path is None:
        runs = sorted(
            Path("runs").glob("*/model/model.safetensors"), key=lambda p: p.stat().st_mtime
        )
        if not runs:
            raise FileNotFoundError(
                "no trained model found under runs/; pass --ckpt RUN_DIR (run `pdclm run` first)"
            )
        return runs[-1].parent
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "model.safetensors").exists() and (cand / "config.json").exists():
            return cand
    raise FileNotFoundError(
        f"{p} holds no model (expected config.json + model.safetensors in it "
        "or in its model/ folder)"
    )


def load_model(path: str | Path | None = None) -> tuple[PDCLM, Config]:
    folder = find_model_dir(path)
    cfg = from_dict(json.loads((folder / "config.json").read_text()))
    model = PDCLM(cfg.pse, cfg.model)
    load_weights(model, folder / "model.safetensors")
    return model.eval(), cfg
