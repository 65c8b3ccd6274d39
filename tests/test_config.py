"""Config: presets load, overrides apply, unknown keys and bad values give clear errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pdclm import config
from pdclm.cli import parse
from pdclm.config import ConfigError, from_dict, load_preset


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu", "gpu-64"])
def test_presets_load_and_validate(name):
    cfg = load_preset(name)
    assert cfg.preset == name


def test_the_64_gpu_preset_splits_every_global_batch_over_64_ranks():
    from pdclm.dist import Part

    cfg = load_preset("gpu-64")
    assert cfg.train.parallel == "fsdp"
    for batch in (cfg.train.batch, cfg.pse.entropy.batch, cfg.cognitive.batch):
        assert Part(63, 64).rows(batch).stop == batch


def test_dotted_overrides_apply_on_top_of_the_preset():
    _, args = parse(
        [
            "run",
            "--preset",
            "tiny",
            "--model.latent.layers=6",
            "--train.steps",
            "7",
            "--pse.encoder.ngrams",
            "3",
            "4",
        ]
    )
    assert args.config.model.latent.layers == 6
    assert args.config.train.steps == 7
    assert args.config.pse.encoder.ngrams == (3, 4)
    assert args.config.model.latent.dim == load_preset("tiny").model.latent.dim


def test_unknown_override_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse(["run", "--preset", "tiny", "--model.latent.layerz=6"])
    assert "layerz" in capsys.readouterr().err


def test_unknown_key_in_a_preset_file_names_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[model.latent]\nlayerz = 3\n")
    with pytest.raises(ConfigError, match=r"model\.latent\.layerz"):
        load_preset(str(f))


@pytest.mark.parametrize(
    "values, match",
    [
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"pse": {"patcher": {"rule": "magic"}}}, "pse.patcher.rule"),
        ({"model": {"latent": {"dim": 100, "heads": 3}}}, "model.latent.dim"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"phases": ["pretrain", "dream"]}, "dream"),
        ({"train": {"grad_clip": -1.0}}, "train.grad_clip"),  # trained backwards silently
        ({"train": {"grad_clip": 0.0}}, "train.grad_clip"),
        ({"train": {"lr": float("inf")}}, "train.lr"),
        ({"train": {"weight_decay": float("nan")}}, "train.weight_decay"),
        ({"train": {"weight_decay": -0.1}}, "train.weight_decay"),
        ({"train": {"min_lr_ratio": 5}}, "train.min_lr_ratio"),
        ({"pse": {"entropy": {"lr": 0.0}}}, "pse.entropy.lr"),
        ({"rl": {"reflection": {"lr": -1.0}}}, "rl.reflection.lr"),
        ({"model": {"latent": {"heads": 0}}}, "model.latent.heads"),  # was a ZeroDivisionError
        ({"model": {"mlp_ratio": 0}}, "model.mlp_ratio"),
        ({"bench": {"noise_rates": [float("nan")]}}, "bench.noise_rates"),
        ({"bench": {"memory_key_weight": 0.0}}, "bench.memory_key_weight"),
        ({"tasks": {"check_retries": -1}}, "tasks.check_retries"),
        ({"run": {"scales": [0.5]}}, "run.scales"),
        ({"run": {"scales": [0.5, -1.0, 0.5]}}, "run.scales"),
    ],
)
def test_bad_values_are_rejected_with_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(values)


def float_keys(obj: object, where: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        key, value = f"{where}.{f.name}" if where else f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += float_keys(value, key)
        elif isinstance(value, float):
            keys.append(key)
    return keys


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_float_key_refuses_nan_and_inf(bad):
    keys = float_keys(config.Config())
    assert "train.grad_clip" in keys and "rl.reflection.threshold" in keys
    for key in keys:
        values: dict = {}
        *sections, last = key.split(".")
        inner = values
        for s in sections:
            inner = inner.setdefault(s, {})
        inner[last] = bad
        with pytest.raises(ConfigError, match=re.escape(key)):
            from_dict(values)


def test_resolve_makes_the_shard_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_preset("tiny")
    config.resolve(cfg)
    assert Path(cfg.data.dir).is_absolute() and Path(cfg.data.dir).parent == tmp_path / "data"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tiny"):
        load_preset("nosuch")


def test_launches_that_do_not_fit_the_parallel_mode_are_refused(monkeypatch, capsys):
    from pdclm.cli import main

    assert main(["run", "--preset", "tiny", "--train.parallel=fsdp"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert main(["run", "--preset", "tiny", "--train.parallel=zero3"]) == 2
    assert "train.parallel must be one of none, ddp, fsdp" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--preset", "tiny"]) == 2
    assert "--train.parallel=ddp" in capsys.readouterr().err
    assert main(["eval", "--preset", "tiny"]) == 2
    assert "only run and train run under torchrun" in capsys.readouterr().err


def test_bf16_is_turned_off_on_a_cpu_without_bf16_units(monkeypatch, capsys):

    cfg = load_preset("cpu")
    assert cfg.train.bf16
    monkeypatch.setattr(config, "bf16_is_fast", lambda device: False)
    config.resolve(cfg)
    assert not cfg.train.bf16
    assert "no bf16 matrix units" in capsys.readouterr().err
    cfg = load_preset("cpu")
    monkeypatch.setattr(config, "bf16_is_fast", lambda device: True)
    config.resolve(cfg)
    assert cfg.train.bf16


def test_the_names_config_validates_against_match_their_registries():
    """config.py imports nothing from the package, so it keeps plain tuples of the names it
    checks; each must equal the registry it stands for."""
    from pdclm.bench.common import LABELS
    from pdclm.data.generators import GENERATORS
    from pdclm.data.tasks import GYM_LEVELS
    from pdclm.pipeline import phase_registry

    assert tuple(phase_registry()) == config.PHASES
    assert tuple(GYM_LEVELS) == config.GYM_TASKS
    assert tuple(GENERATORS) == config.GENERATED_TASKS
    assert tuple(LABELS) == config.BENCH_ARMS


def test_a_preset_can_be_written_as_changes_to_another(tmp_path):
    """``inherits``: the named preset, then this file's keys section by section; the memory
    bench's preset is the tiny one with the README table's settings."""
    child = tmp_path / "small.toml"
    child.write_text('inherits = "tiny"\n[train]\nbatch = 3\n[pse.patcher]\nrule = "global"\n')
    cfg, tiny = load_preset(str(child)), load_preset("tiny")
    assert cfg.preset == "small" and cfg.train.batch == 3 and cfg.pse.patcher.rule == "global"
    assert cfg.train.seq_len == tiny.train.seq_len  # the rest of the section is tiny's
    assert cfg.pse.patcher.calibration_bytes == tiny.pse.patcher.calibration_bytes
    memory = load_preset("memory")
    assert memory.model.latent == tiny.model.latent and memory.bench.memory_pse_preset == "cpu"
    assert (memory.model.decoder.layers, memory.model.decoder.window) == (1, 0)  # the table's
    child.write_text('inherits = "small"\n')
    with pytest.raises(ConfigError, match="inherits must name another preset"):
        load_preset(str(child))
