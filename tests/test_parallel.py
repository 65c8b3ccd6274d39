"""Several ranks (gloo, 2 processes on CPU): DDP and FSDP2 train exactly what one process
trains on the same global batch, sharded checkpoints resume bit-identically and load in one
process, a save killed midway leaves the previous checkpoint the latest, and the README's
`torchrun ... pdclm run` goes through all three phases.

The trainer checks share one spawned pair of ranks (:func:`_ranks`), so the suite pays the
start-up of two processes once; the full run is one `torchrun`, as a user launches it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pdclm import dist
from pdclm.config import ConfigError
from pdclm.train.checkpoint import (
    is_sharded,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_weights,
)
from pdclm.train.loop import Trainer
from pdclm.train.objectives import lm_loss
from tests.test_train_loop import cfg, fresh_model, sampler

GLOBAL_BATCH = 4
STEPS, CKPT = 6, 3
KILLED = 99  # the step of the save that is killed midway


def run_cfg(mode: str, **kw):
    return cfg(
        batch=GLOBAL_BATCH, steps=STEPS, ckpt_every=CKPT, eval_every=CKPT, parallel=mode, **kw
    )


def make_trainer(folder: Path, model: torch.nn.Module, c) -> Trainer:
    return Trainer(
        "t",
        model,
        c,
        folder,
        functools.partial(sampler, batch=GLOBAL_BATCH),
        lm_loss,
        evaluate=lambda m: lm_loss(m, sampler(10_000, batch=GLOBAL_BATCH))[1],
        progress=False,
    )


def _ranks(rank: int, tmp: str, port: int) -> None:
    """One of two ranks: train with DDP (with activation checkpointing) and with FSDP, resume
    FSDP from its mid-run checkpoint, then die in the middle of one more save."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    out = Path(tmp)
    dist.init(run_cfg("ddp", device="cpu"))
    weights = {}
    for mode, recompute in (("ddp", True), ("fsdp", False)):
        model = fresh_model()
        c = run_cfg(mode, activation_checkpointing=recompute)
        trainer = make_trainer(out / mode, model, c)
        trainer.fit()
        weights[mode] = {k: v.clone() for k, v in model.state_dict().items()}

    # the FSDP run's mid-run checkpoint alone in a new folder: training on from it
    if rank == 0:
        step = f"step_{CKPT:07d}"
        shutil.copytree(out / "fsdp" / "ckpt" / step, out / "resumed" / "ckpt" / step)
    dist.barrier()
    model = fresh_model()
    make_trainer(out / "resumed", model, run_cfg("fsdp")).fit()
    weights["fsdp_resumed"] = model.state_dict()
    if rank == 0:
        torch.save(weights, out / "weights.pt")
    dist.barrier()

    # both ranks die (no clean-up runs) once their shards are on disk, before the save ends
    from torch.distributed.checkpoint import FileSystemWriter

    from pdclm.train.checkpoint import save_sharded

    write = FileSystemWriter.write_data

    def write_then_die(self, *args, **kwargs):
        write(self, *args, **kwargs).wait()
        os._exit(0)

    FileSystemWriter.write_data = write_then_die
    save_sharded(out / "fsdp" / "ckpt", KILLED, trainer.net, trainer.optimizer, keep=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_ranks, args=(str(out), free_port()), nprocs=2, join=True)
    return out


def one_process(folder: Path, until: int | None = None) -> dict[str, torch.Tensor]:
    model = fresh_model()
    make_trainer(folder, model, run_cfg("none")).fit(until=until)
    return model.state_dict()


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), (k, (a[k] - b[k]).abs().max())


def test_ddp_and_fsdp_train_what_one_process_trains(ranks, tmp_path):
    ref = one_process(tmp_path)
    init = fresh_model().state_dict()
    got = torch.load(ranks / "weights.pt", weights_only=True)
    moved = max((ref[k] - init[k]).abs().max().item() for k in ref)
    assert moved > 1e-2  # training changed the weights: the comparison below is not trivial
    for mode in ("ddp", "fsdp"):
        assert_close(got[mode], ref, atol=1e-5)


def test_sharded_checkpoint_resumes_bit_identically_and_loads_in_one_process(ranks, tmp_path):
    got = torch.load(ranks / "weights.pt", weights_only=True)
    for k, v in got["fsdp"].items():  # resumed on 2 ranks = uninterrupted on 2 ranks, bit for bit
        assert torch.equal(v, got["fsdp_resumed"][k]), k
    last = latest_checkpoint(ranks / "fsdp" / "ckpt")
    assert is_sharded(last)
    model = fresh_model()
    load_checkpoint(last, model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, got["fsdp"][k]), k
    assert read_weights(last).keys() == got["fsdp"].keys()

    # one process resumes the 2-rank run from its mid-run checkpoint and ends where one
    # process alone ends
    step = f"step_{CKPT:07d}"
    shutil.copytree(ranks / "fsdp" / "ckpt" / step, tmp_path / "resumed" / "ckpt" / step)
    assert_close(one_process(tmp_path / "resumed"), one_process(tmp_path / "alone"), atol=1e-5)


def test_a_save_killed_midway_leaves_the_previous_checkpoint(ranks):
    ckpt = ranks / "fsdp" / "ckpt"
    half = ckpt / f".step_{KILLED:07d}.tmp"
    assert list(half.glob("*.distcp"))  # the shards were written ...
    assert not (half / "meta.json").exists()  # ... and the save never finished
    assert [p.name for p in list_checkpoints(ckpt)] == [f"step_{s:07d}" for s in (CKPT, STEPS)]
    got = torch.load(ranks / "weights.pt", weights_only=True)
    model = fresh_model()
    load_checkpoint(latest_checkpoint(ckpt), model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, got["fsdp"][k]), k


def test_bad_launches_fail_clearly(tmp_path, monkeypatch):
    for mode in ("ddp", "fsdp"):
        with pytest.raises(ConfigError, match="torchrun"):
            make_trainer(tmp_path, fresh_model(), run_cfg(mode))
        with pytest.raises(ConfigError, match="torchrun"):
            dist.init(run_cfg(mode))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.parallel=none"):
        dist.init(run_cfg("none"))
    with pytest.raises(ConfigError, match="divide"):
        dist.Part(0, 3).rows(GLOBAL_BATCH)
    assert [dist.Part(r, 2).rows(4) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]


SMALL_RUN = [
    "--preset",
    "tiny",
    "--no-progress",
    *("--train.steps", "6", "--pse.entropy.steps", "6", "--cognitive.steps", "2"),
    *("--cognitive.episodes-per-round", "16", "--cognitive.proposals", "2"),
    *("--cognitive.dialogue-items", "1", "--tasks.eval-items", "2", "--tasks.sweep-items", "1"),
    *("--rl.steps", "2", "--rl.prompts", "2", "--rl.group", "2", "--rl.robustness-items", "1"),
    *("--rl.reflection.steps", "2", "--rl.reflection.items", "8"),
]
"""The tiny preset cut to the fewest steps and items that still pass through every part of
every phase."""


def test_a_fresh_two_rank_run_goes_through_every_phase(tmp_path, corpus):
    """The README's command, on a new run folder: one rank writes each shared file and model
    folder while the other waits (two ranks copying Phase 3's start model used to collide)."""
    run = tmp_path / "run"
    data = ["--data.sources", str(corpus), "--data.dir", str(tmp_path / "data")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*launch, "-m", "pdclm", "run", "--train.parallel=fsdp", "--out", str(run)]
    done = subprocess.run(
        [*cmd, *SMALL_RUN, *data],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]  # torchrun: 0 only when both ranks exit 0
    assert "Traceback" not in out and "pdclm: error" not in out, out[-4000:]
    report = json.loads((run / "report.json").read_text())
    assert {"phase1", "phase2", "phase3"} <= set(report)
    probe = report["phase3"]["probe"]  # both ranks probed and chose alike; rank 0 wrote
    assert [r["update"] for r in probe["history"]] == [0, 2] and probe["items"] == 8
    assert (
        run / "reflective" / "best" / f"update_{probe['kept']['update']:05d}.safetensors"
    ).exists()
    assert (run / "report.md").exists()
    assert sorted(p.name for p in (run / "phases").iterdir()) == [
        "cognitive.json",
        "pretrain.json",
        "reflective.json",
    ]
    for folder in ("phase1_model", "phase2_model", "model"):
        assert (run / folder / "checksums.json").exists(), folder
    assert (run / "model" / "reflector.safetensors").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary folders
