"""Checkpoints: atomic, verified, pickle-free weights; corrupt ones fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from pdclm.config import load_preset
from pdclm.io import CheckpointError
from pdclm.model.io import load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def make():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, opt = make()
    path = save_checkpoint(tmp_path, 5, model, opt, {"note": 1})
    model2, opt2 = make()
    meta = load_checkpoint(path, model2, opt2)
    assert meta["step"] == 5 and meta["extra"] == {"note": 1}
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"]
    )


def test_keeps_only_the_newest_and_ignores_half_written(tmp_path):
    model, opt = make()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    (tmp_path / ".step_0000004.tmp").mkdir()  # a save killed midway
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert latest_checkpoint(tmp_path).name == "step_0000003"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    model, opt = make()
    path = save_checkpoint(tmp_path, 1, model, opt)
    f = path / "model.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        f.unlink()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match="corrupt|incomplete"):
        load_checkpoint(path, model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), (
        "model was touched"
    )


def test_weights_from_another_model_are_refused(tmp_path):
    model, opt = make()
    path = save_checkpoint(tmp_path, 1, model, opt)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path, other)


def test_a_model_saved_before_a_weight_setting_existed_is_refused(tmp_path):
    """A model folder whose config lacks a setting that changes what its weights compute (an
    older version's) fails clearly instead of loading with the new default."""
    cfg = load_preset("tiny")
    folder = save_model(PDCLM(cfg.pse, cfg.model), cfg, tmp_path / "model")
    load_model(folder)  # loads as saved
    config = json.loads((folder / "config.json").read_text())
    del config["pse"]["entropy"]["window"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "checksums.json").unlink()  # the older version's own checksums would match
    with pytest.raises(CheckpointError, match="pse.entropy.window.*older version"):
        load_model(folder)
