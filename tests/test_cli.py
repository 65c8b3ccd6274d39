"""The `pdclm` command's surface: fast, short, plain help; one-line user errors with exit 2
(bad values, no GPU, a full or read-only disk); `eval --data` on any text, from any folder."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from pdclm import config
from pdclm.cli import COMMANDS, config_keys, main, parse
from pdclm.config import load_preset
from pdclm.model.io import save_model
from pdclm.model.pdclm import PDCLM, next_symbol_loss
from pdclm.vocab import BOS, EOS

RST = ("``", ":func:", ":mod:", ":class:", ":meth:")


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert err.startswith("pdclm: error: ")
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model folder: enough to score text, made in a fraction of a second."""
    folder = tmp_path_factory.mktemp("model") / "model"
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    save_model(PDCLM(cfg.pse, cfg.model), cfg, folder)
    return folder


def test_help_imports_no_torch():
    """`pdclm --help` took 1.8 s, nearly all of it importing torch through pdclm.dist."""
    code = (
        "import sys\nfrom pdclm.cli import main\n"
        "for argv in (['--help'], ['solve', '--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "try:\n    main(['foo'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "False", done.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pdclm {version('pdclm')}"


def test_an_unknown_command_is_one_line_naming_the_known_ones(capsys):
    assert main(["foo"]) == 2
    err = one_error_line(capsys)
    assert "unknown command 'foo'" in err and "eval" in err and "export" in err


def test_top_level_help_is_plain_and_keeps_its_line_continuation(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert not any(m in out for m in RST)
    assert "--rdzv_id=pdclm \\\n" in out
    assert "pretrain|cognitive|reflective" in out and "--version" in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_is_short_plain_and_lists_its_own_options_first(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < 60, out
    assert not any(m in out for m in RST), out
    assert f"--help-config shows all {len(config_keys())} keys" in " ".join(out.split())
    assert "--model.latent" not in out  # config keys are behind --help-config
    if name == "train":
        assert "pretrain|cognitive|reflective" in lines[0]
    if name == "eval":
        assert out.index("--data FILE|DIR|-") < out.index("--out DIR")


def test_help_config_lists_every_key_without_markup(capsys):
    with pytest.raises(SystemExit):
        parse(["export", "--preset", "tiny", "--help-config"])
    out = capsys.readouterr().out
    assert "--train.grad-clip" in out and "--bench.memory-docs" in out
    assert not any(m in out for m in RST)


@pytest.mark.parametrize(
    "argv, key",
    [
        (["run", "--train.grad_clip=-1"], "train.grad_clip"),
        (["run", "--train.lr=inf"], "train.lr"),
        (["run", "--train.weight_decay=nan"], "train.weight_decay"),
        (["run", "--train.min_lr_ratio=5"], "train.min_lr_ratio"),
        (["run", "--rl.reflection.lr=0"], "rl.reflection.lr"),
        (["run", "--model.latent.heads=0"], "model.latent.heads"),
        (["solve", "2 + 3?", "--think-budget", "-3"], "--think-budget"),
        (["solve", "2 + 3?", "--samples", "0"], "--samples"),
        (["generate", "x", "--temperature", "nan"], "--temperature"),
        (["eval", "--batches", "0"], "--batches"),
    ],
)
def test_bad_values_are_one_line_naming_the_key_and_exit_2(argv, key, capsys):
    assert main([*argv, "--preset", "tiny"]) == 2
    assert key in one_error_line(capsys)


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch, capsys):
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert main(["run", "--preset", "tiny", "--train.device=cuda"]) == 2
    assert "train.device is cuda" in one_error_line(capsys)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(
    model_dir, tmp_path, monkeypatch, capsys
):
    text, out = tmp_path / "t.txt", tmp_path / "ev.json"
    text.write_text("some text to score\n")
    out.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # as a write() on a full disk fails: no file named
    assert main(["eval", "--ckpt", str(model_dir), "--data", str(text), "--json", str(out)]) == 2
    err = capsys.readouterr().err  # (stdout has the score, printed before the write)
    assert len(err.strip().splitlines()) == 1
    assert "no space left on device" in err and str(out) in err
    assert out.read_text() == "old" and not list(tmp_path.glob("*.tmp"))


def test_a_read_only_output_folder_is_one_line(model_dir, tmp_path, monkeypatch, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text to score\n")

    def read_only(self: Path, *args, **kwargs) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # chmod does not stop root
    target = tmp_path / "ro" / "ev.json"
    assert main(["eval", "--ckpt", str(model_dir), "--data", str(text), "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "read-only file system" in err and str(target.parent) in err


def test_torch_save_on_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """torch.save on a full disk says only `[enforce fail at inline_container.cc:672]
    unexpected pos`; the file comes from its frame."""
    import pdclm.cli as cli

    target = tmp_path / "train_state.pt"

    class FullWriter:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
            )

    monkeypatch.setattr(torch._C, "PyTorchFileWriter", FullWriter)
    monkeypatch.setattr(cli, "cmd_export", lambda args: torch.save({"x": 1}, str(target)))
    assert main(["export", "x", "--preset", "tiny"]) == 2
    err = one_error_line(capsys)
    assert "no space left on device" in err and str(target) in err


def test_a_bug_still_gives_a_traceback(monkeypatch):
    import pdclm.cli as cli

    monkeypatch.setattr(cli, "cmd_export", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["export", "x", "--preset", "tiny"])


def windows_bits(model: PDCLM, data: bytes, n: int) -> tuple[float, int]:
    """Bits and bytes scored one window at a time, as a reference for the batched eval."""
    syms = torch.tensor([BOS, *data, EOS])
    bits, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(syms) - 1, n):
            w = syms[start : start + n + 1][None]
            k = int((w[:, 1:] < 256).sum())
            bits += float(next_symbol_loss(model(w), w[:, 1:])[1]) * k
            count += k
    return bits, count


def test_eval_scores_any_text_file_as_the_model_reads_it(model_dir, tmp_path):
    from pdclm.model.io import load_model

    rng = np.random.default_rng(0)
    data = bytes(rng.choice(list(b"abc def\n"), size=1000))  # 7 full windows + a short one
    (tmp_path / "t.txt").write_bytes(data)
    out = tmp_path / "ev.json"
    argv = ["eval", "--ckpt", str(model_dir), "--data", str(tmp_path / "t.txt")]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["bytes"] == len(data) and result["documents"] == 1
    model, cfg = load_model(model_dir)
    bits, count = windows_bits(model, data, cfg.train.seq_len)
    assert result["bpb"] == pytest.approx(bits / count, rel=1e-4)


def test_eval_scores_stdin(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello world\n")))
    out = tmp_path / "ev.json"
    assert main(["eval", "--ckpt", str(model_dir), "--data", "-", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["bytes"] == 12 and 0 < result["bpb"] < 12


def test_eval_finds_the_run_shards_from_any_folder(corpus, tmp_path, monkeypatch):
    """An older run's config names its shards relative to where it was started; eval finds
    them from another working directory. New configs name them absolute."""
    from pdclm.data.ingest import prepare

    root = tmp_path / "clone"
    cfg = load_preset("tiny")
    cfg.data.sources, cfg.data.dir = [str(corpus)], str(root / "data" / "c")
    prepare(cfg.data, progress=False)
    cfg.data.dir = "data/c"
    save_model(PDCLM(cfg.pse, cfg.model), cfg, root / "runs" / "r1" / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "ev.json"
    argv = ["eval", "--ckpt", str(root / "runs" / "r1"), "--batches", "1", "--json", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["data"] == str(root / "data" / "c")
    _, args = parse(["eval", "--preset", "tiny", "--data.dir", "rel"])
    assert args.config.data.dir == str(elsewhere / "rel")
