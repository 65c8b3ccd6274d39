"""End to end through the CLI a user runs: tiny `pdclm run`, resume, pse, generate, eval, bench."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from pdclm.cli import main


def common(tmp_path: Path, corpus: Path) -> list[str]:
    return [
        "--preset",
        "tiny",
        "--data.dir",
        str(tmp_path / "data"),
        "--data.sources",
        str(corpus),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    assert (
        main(
            [
                "run",
                *common(tmp, corpus),
                "--out",
                str(out),
                "--train.steps",
                "60",
                "--json",
                str(tmp / "run.json"),
            ]
        )
        == 0
    )
    return out


def test_run_leaves_a_complete_run_folder(tiny_run: Path):
    for name in (
        "config.json",
        "metrics.jsonl",
        "report.md",
        "report.json",
        "curves.png",
        "phase1_entropy_profile.png",
        "phase1_patch_lengths.png",
        "model/model.safetensors",
        "model/config.json",
        "phase1_model/model.safetensors",
        "phase2_task_accuracy.png",
        "phase2_accuracy_vs_budget.png",
        "cognitive/rounds/round_01.jsonl",
        "phase2_model/model.safetensors",
        "phase3_task_accuracy.png",
        "phase3_reward_channels.png",
        "reflective/critic/v01.safetensors",
        "reflective/rollouts/batch_00003.jsonl",
    ):
        assert (tiny_run / name).exists(), name
    assert list((tiny_run / "tb").iterdir()), "no TensorBoard events"
    report = json.loads((tiny_run / "report.json").read_text())
    p1 = report["phase1"]
    assert p1["val_bpb"] < p1["val_bpb_initial"] - 0.5, "validation bits per byte did not drop"
    assert 2.5 < p1["patcher"]["mean_len"] < 7.0
    md = (tiny_run / "report.md").read_text()
    assert f"{p1['val_bpb']:.4g}" in md  # the headline figures are in report.md
    # written for a person: a page or two, no dotted keys (those are report.json's), the plots
    # inline and every one of them in the run folder
    assert len(md.splitlines()) < 150 and "phase1.tasks." not in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "phase2_accuracy_vs_budget.png" in links
    assert all((tiny_run / f).exists() for f in links), links
    p2 = report["phase2"]
    for phase in (p1, p2):  # held-out accuracy per phase and task, beside the constant answer
        for name in report["config"]["tasks"]["names"]:
            t = phase["tasks"][name]
            assert 0 <= t["accuracy"] <= 1 and 0 <= t["constant_baseline"] <= 1
    assert set(p2["budget_sweep"]["chain_sum"]) == {"0", "2"}
    assert p2["text_bpb_before"] is not None and p2["text_bpb_after"] is not None
    assert p2["source_separation"]["answers"] > 0
    assert "Held-out task accuracy" in md and "phase2 accuracy" in md
    p3 = report["phase3"]
    assert "phase3 accuracy" in md
    # the claims table: the run's own robustness row, every claim present, verdicts valid
    rows = report["claims"]["claims"]
    assert any(r["source"] == "this run (Phase 3 robustness)" for r in rows)
    assert all(
        r["verdict"] in ("holds", "does not hold", "not measurable at this size") for r in rows
    )
    assert "## Claims" in md
    for key in ("answer", "step"):
        assert p3["reflection"][key]["wrong"] >= 0
    for mode in ("plain", "reflect"):
        assert 0 <= p3["robustness"][mode]["perturbed"] <= 1
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    grpo = [m for m in metrics if m["phase"] == "phase3/grpo"]
    assert len(grpo) == report["config"]["rl"]["steps"]
    for channel in ("correctness", "consistency", "justification", "efficiency", "hallucination"):
        assert all(0 <= m[channel] <= 1 for m in grpo), channel


def test_resuming_a_finished_run_redoes_nothing(tiny_run: Path, tmp_path, corpus):
    before = (tiny_run / "phases" / "pretrain.json").read_text()
    assert main(["run", *common(tiny_run.parent, corpus), "--resume", str(tiny_run)]) == 0
    assert (tiny_run / "phases" / "pretrain.json").read_text() == before


def test_pse_generate_eval_on_the_trained_model(tiny_run: Path, tmp_path, capsys):
    plot = tmp_path / "p.png"
    assert (
        main(
            [
                "pse",
                "def f(x):\n    return x",
                "--ckpt",
                str(tiny_run),
                "--plot",
                str(plot),
                "--json",
                str(tmp_path / "pse.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "patches" in out and plot.stat().st_size > 1000
    pse = json.loads((tmp_path / "pse.json").read_text())
    assert (
        "".join(pse["patches"]).replace("␣", " ").replace("\\n", "\n") == "def f(x):\n    return x"
    )
    assert (
        main(
            [
                "generate",
                "def ",
                "--ckpt",
                str(tiny_run),
                "--max-bytes",
                "40",
                "--json",
                str(tmp_path / "gen.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "gen.json").read_text())["prompt"] == "def "
    assert main(["eval", "--ckpt", str(tiny_run), "--json", str(tmp_path / "ev.json")]) == 0
    solve_json = tmp_path / "solve.json"
    assert (
        main(
            [
                "solve",
                "What is 2 + 3?",
                "--ckpt",
                str(tiny_run),
                "--think-budget",
                "2",
                "--think-bytes",
                "40",
                "--samples",
                "2",
                "--context",
                "2 + 3 = 5",
                "--json",
                str(solve_json),
            ]
        )
        == 0
    )
    solved = json.loads(solve_json.read_text())
    assert len(solved["steps"]) <= 3 and set(solved) >= {
        "answer",
        "consistent",
        "agreement",
        "source",
    }
    assert json.loads((tmp_path / "ev.json").read_text())["val_bpb"] < 8
    # a question in a generator's format is recognised and gets task-aware checks
    assert (
        main(
            [
                "solve",
                "Compute 3 + 4 * 2.",
                "--ckpt",
                str(tiny_run),
                "--think-bytes",
                "40",
                "--json",
                str(solve_json),
            ]
        )
        == 0
    )
    assert json.loads(solve_json.read_text())["task"] == "arithmetic"
    # self-debugging with Phase 3's reflection network: every round shown, the chosen last
    args = ["solve", "Compute 3 + 4 * 2.", "--ckpt", str(tiny_run), "--reflect"]
    assert main([*args, "--think-bytes", "40", "--json", str(solve_json)]) == 0
    rounds = json.loads(solve_json.read_text())["reflection"]
    assert rounds and all(0 <= r["score"] <= 1 for r in rounds)
    assert "reflection round 0" in capsys.readouterr().out
    sp = tmp_path / "sp.jsonl"
    assert (
        main(
            [
                "selfplay",
                "--preset",
                "tiny",
                "--ckpt",
                str(tiny_run),
                "--episodes",
                str(sp),
                "--json",
                str(tmp_path / "sp.json"),
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "sp.json").read_text())
    assert stats["proposer"]["proposed"] == 4 and sp.exists()


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    def prepare(source: Path) -> int:
        args = ["--data.sources", str(source), "--data.dir", str(tmp_path / source.name / "d")]
        return main(["prepare", "--preset", "tiny", *args])

    missing = tmp_path / "nope"
    assert prepare(missing) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare(empty) == 2
    assert str(empty) in capsys.readouterr().err
    assert main(["generate", "x", "--ckpt", str(tmp_path)]) == 2
    assert "holds no model" in capsys.readouterr().err
    assert main(["nosuch"]) == 2


def test_phase3_refuses_a_run_without_phase2(tiny_run: Path, tmp_path, capsys):
    run = tmp_path / "only_phase1"
    shutil.copytree(tiny_run / "phase1_model", run / "model")
    shutil.copytree(tiny_run / "phases", run / "phases")
    (run / "phases" / "cognitive.json").unlink()
    assert main(["train", "reflective", "--preset", "tiny", "--out", str(run)]) == 2
    assert "no finished Phase 2" in capsys.readouterr().err
    assert not (run / "reflective").exists()


def test_a_corrupt_checkpoint_stops_resume_with_a_clear_error(
    tiny_run: Path, tmp_path, corpus, capsys
):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "phases")  # pretend the phase did not finish
    ckpt = sorted((run / "pretrain" / "ckpt").iterdir())[-1]
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    assert main(["run", *common(tiny_run.parent, corpus), "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(ckpt) in err


def test_a_run_killed_in_any_phase_resumes_to_the_same_weights(tmp_path, corpus, monkeypatch):
    from safetensors.torch import load_file

    from pdclm.data.shards import BatchSampler
    from pdclm.train.cognitive import RoundData
    from pdclm.train.reflective import RolloutBatches

    args = [*common(tmp_path, corpus), "--train.steps", "30"]
    assert main(["run", *args, "--out", str(tmp_path / "straight")]) == 0

    real_batch = BatchSampler.batch

    def dies_at_step_20(self, step, rows=slice(None)):
        if self.seq_len == 128 and step == 20:  # the LM's sampler (the entropy model's is 64)
            raise KeyboardInterrupt
        return real_batch(self, step, rows)

    monkeypatch.setattr(BatchSampler, "batch", dies_at_step_20)
    assert main(["run", *args, "--out", str(tmp_path / "killed")]) == 130
    assert not (tmp_path / "killed" / "model").exists()
    monkeypatch.setattr(BatchSampler, "batch", real_batch)

    real_round_batch = RoundData.batch

    def dies_in_phase2_round_1(self, i, keep=slice(None)):  # after round 1's data is written
        if i == 9:  # mid-training
            raise KeyboardInterrupt
        return real_round_batch(self, i, keep)

    monkeypatch.setattr(RoundData, "batch", dies_in_phase2_round_1)
    assert main(["run", *args, "--resume", str(tmp_path / "killed")]) == 130
    assert (tmp_path / "killed" / "phases" / "pretrain.json").exists()
    assert not (tmp_path / "killed" / "phases" / "cognitive.json").exists()
    monkeypatch.setattr(RoundData, "batch", real_round_batch)

    real_rollouts = RolloutBatches.batch

    def dies_in_phase3(self, i, rows):  # rollouts of update 3 on disk, its step not taken
        out = real_rollouts(self, i, rows)
        if i == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(RolloutBatches, "batch", dies_in_phase3)
    assert main(["run", *args, "--resume", str(tmp_path / "killed")]) == 130
    assert (tmp_path / "killed" / "phases" / "cognitive.json").exists()
    assert not (tmp_path / "killed" / "phases" / "reflective.json").exists()
    monkeypatch.setattr(RolloutBatches, "batch", real_rollouts)
    assert main(["run", *args, "--resume", str(tmp_path / "killed")]) == 0

    # Phase 3's probe (before the kill: the Phase 2 model and update 2; after it: update 4)
    # reads the same and keeps the same model
    probes = [
        json.loads((tmp_path / run / "report.json").read_text())["phase3"]["probe"]
        for run in ("straight", "killed")
    ]
    readings = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in p["history"]] for p in probes
    ]
    assert [r["update"] for r in readings[0]] == [0, 2, 4]
    assert readings[0] == readings[1] and probes[0]["kept"] == probes[1]["kept"]
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs between the resumed and the straight run"


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_resume_reads_the_runs_own_config_and_refuses_other_settings(
    tiny_run: Path, tmp_path, capsys
):
    run = copy_run(tiny_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0  # no --preset needed
    assert json.loads((run / "config.json").read_text()) == saved  # train.steps=60 kept
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--preset", "cpu", "--train.steps", "61"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "preset (run: 'tiny', given: 'cpu')" in err
    assert "train.steps (run: 60, given: 61)" in err
    assert json.loads((run / "config.json").read_text()) == saved
    # where and how fast it computes may change (another machine, another number of ranks)
    assert main(["run", "--resume", str(run), "--train.threads", "1", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["threads"] == 1


def test_resume_refuses_a_folder_that_is_not_a_run(tiny_run: Path, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, why in (
        (empty, "not a run folder"),
        (tiny_run / "model", "a model folder"),
        (tmp_path / "missing", "no such run folder"),
    ):
        assert main(["run", "--resume", str(folder)]) == 2
        err = capsys.readouterr().err
        assert why in err and str(folder) in err
    assert not any(empty.iterdir())  # no run was started inside it


def test_a_corrupt_or_truncated_model_folder_is_refused_with_advice(
    tiny_run: Path, tmp_path, capsys
):
    import random

    from pdclm.model.io import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    header = 8 + int.from_bytes(good[:8], "little")
    data = bytearray(good)
    for i in random.Random(0).sample(range(header, len(data)), 1000):  # tensor bytes only
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["eval", "--ckpt", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"{model} is corrupt: model.safetensors does not match its checksum" in err
    assert "pdclm export" in err
    weights.write_bytes(good[: len(good) // 2])
    assert main(["generate", "x", "--ckpt", str(model)]) == 2
    assert "is corrupt" in capsys.readouterr().err
    (model / "reflector.safetensors").unlink()
    weights.write_bytes(good)
    assert main(["generate", "x", "--ckpt", str(model)]) == 2
    assert "incomplete: reflector.safetensors is missing" in capsys.readouterr().err
    (model / "checksums.json").unlink()  # as saved before model folders had checksums
    load_model(model)


PHASE3_SMALL = [
    *("--rl.steps", "1", "--rl.prompts", "2", "--rl.group", "2", "--rl.robustness-items", "1"),
    *("--rl.reflection.steps", "2", "--rl.reflection.items", "8", "--tasks.eval-items", "2"),
    *("--tasks.sweep-items", "1"),
]


def test_a_killed_model_copy_does_not_block_resume(
    tiny_run: Path, tmp_path, corpus, monkeypatch, capsys
):
    from pdclm.io import CHECKSUMS, sha256

    run = copy_run(tiny_run, tmp_path)
    # back to the end of Phase 2: Phase 3 has not begun and RUN/model is the Phase 2 model
    (run / "phases" / "reflective.json").unlink()
    shutil.rmtree(run / "reflective")
    shutil.rmtree(run / "model")
    (run / "phase2_model").rename(run / "model")
    digest = sha256(run / "model" / "model.safetensors")
    args = ["train", "reflective", "--resume", str(run), "--no-progress"]
    args += PHASE3_SMALL  # Phase 3 has not begun: its settings are still open

    real_copy = shutil.copyfile

    def dies_halfway(src, dst, *a, **k):  # the copy Phase 3 starts with is interrupted
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", dies_halfway)
    assert main(args) == 130
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert not (run / "phase2_model").exists() and not (run / ".phase2_model.tmp").exists()
    # what a kill -9 at that moment leaves, and what a copy without atomic writes used to leave
    (run / ".phase2_model.tmp").mkdir()
    (run / ".phase2_model.tmp" / "model.safetensors").write_bytes(b"half")
    (run / "phase2_model").mkdir()
    shutil.copyfile(run / "model" / "config.json", run / "phase2_model" / "config.json")
    assert main(args) == 0, capsys.readouterr().err
    assert (run / "phases" / "reflective.json").exists()
    assert sha256(run / "phase2_model" / "model.safetensors") == digest
    assert (run / "phase2_model" / CHECKSUMS).exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_budgeted_run_sizes_its_steps_once_and_resumes_them(tmp_path, corpus, monkeypatch):
    """``--budget``: the probe's step time against the reference scales every phase's step
    counts; before each later phase the run refits them to the time left, from how long the
    finished phases took; the counts are in config.json, and a run killed in Phase 2 resumes
    (probing nothing again, on a machine now twice as fast) to exactly the straight run's
    weights."""
    from safetensors.torch import load_file

    from pdclm import pipeline
    from pdclm.train.budget import refit_to_budget
    from pdclm.train.cognitive import RoundData

    # every finished phase took 7 s, half what the probe predicts (4 x (2 + 3 x 0.5) = 14 s
    # at the 42 s budget below): the phases left get (42 - 7 - 8) / 12 > 1 of their steps,
    # capped at the preset's counts (real phase times would make two runs differ)
    monkeypatch.setattr(
        pipeline,
        "refit_to_budget",
        lambda cfg, spent: refit_to_budget(cfg, dict.fromkeys(spent, 7.0)),
    )

    probes = []

    def probe(speed: float):
        def timed(cfg) -> float:
            probes.append(speed)
            return speed

        return timed

    # a machine 4x slower than the reference; fixed work 2 x 4 s, stepped 3 x 4 s: the
    # 14 s budget leaves (14 - 24) / 36 < 0.1 of the steps, so the floor of 0.1 applies ...
    reference = ["--run.reference-step-seconds", "0.5", "--run.reference-fixed", "2", "2", "2"]
    reference += ["--run.reference-stepped", "3", "3", "3"]
    args = [*common(tmp_path, corpus), *reference, "--cognitive.rounds", "1"]
    monkeypatch.setattr(pipeline, "probe_step_seconds", probe(2.0))
    assert main(["run", *args, "--budget", "14s", "--out", str(tmp_path / "floor")]) == 0
    saved = json.loads((tmp_path / "floor" / "config.json").read_text())
    assert saved["run"]["scale"] == 0.1 and saved["train"]["steps"] == 3  # 30 x 0.1
    # ... and with 42 s, (42 - 24) / 36 = 0.5 of them
    args += ["--budget", "42s"]
    assert main(["run", *args, "--out", str(tmp_path / "straight")]) == 0
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["run"]["scale"] == 0.5 and saved["run"]["probe_step_seconds"] == 2.0
    assert saved["train"]["steps"] == 15 and saved["pse"]["entropy"]["steps"] == 15
    assert saved["run"]["scales"] == [0.5, 1.0, 1.0]  # refitted after Phase 1
    assert saved["cognitive"]["steps"] == 12 and saved["rl"]["steps"] == 4  # tiny: 12, 4
    report = (tmp_path / "straight" / "report.md").read_text()
    assert "Sized to a budget of 42 s" in report and "cognitive x1.00" in report

    real_batch = RoundData.batch

    def dies_in_phase2(self, i, keep=slice(None)):
        if i == 2:
            raise KeyboardInterrupt
        return real_batch(self, i, keep)

    monkeypatch.setattr(RoundData, "batch", dies_in_phase2)
    assert main(["run", *args, "--out", str(tmp_path / "killed")]) == 130
    monkeypatch.setattr(RoundData, "batch", real_batch)
    monkeypatch.setattr(pipeline, "probe_step_seconds", probe(0.25))
    runs_before = len(probes)
    assert main(["run", "--resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    assert len(probes) == runs_before, "a resumed run probed the machine again"
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_refit_gives_the_phases_left_the_time_left_and_changes_nothing_when_repeated():
    """A probe that read the machine 2x slow cut every phase to 0.17 of its steps; Phase 1
    then ran at the reference's speed, so the phases left get the time left at that speed.
    Refitting again with the same seconds (a resume) leaves every count as it is."""
    from pdclm.config import load_preset
    from pdclm.train.budget import fit_to_budget, refit_to_budget

    cfg = load_preset("tiny")  # steps: pretrain 30, cognitive 12, reflective 4
    cfg.run.budget, cfg.run.reference_step_seconds = 101.0, 1.0
    cfg.run.reference_fixed, cfg.run.reference_stepped = [10.0, 10.0, 10.0], [40.0, 40.0, 40.0]
    fit_to_budget(cfg, 2.0)  # speed 2: (101 - 60) / 240
    assert cfg.run.scales == [0.1708] * 3 and cfg.cognitive.steps == 2 and cfg.rl.steps == 1
    # Phase 1 took 10 + 40 x 0.1708 s, the reference's speed: (101 - 16.83 - 20) / 80 = 0.8021
    phase1 = {"pretrain": 10 + 40 * 0.1708}
    fitted = refit_to_budget(cfg, phase1)
    assert fitted and fitted["speed_vs_reference"] == 1.0 and fitted["scale"] == 0.8021
    assert cfg.run.scales == [0.1708, 0.8021, 0.8021] and cfg.train.steps == 5
    assert cfg.cognitive.steps == 9 and cfg.rl.steps == 4  # 2 and 1, x 0.8021 / 0.1708
    again = refit_to_budget(cfg, phase1)
    assert again and again["steps"] == {} and cfg.cognitive.steps == 9 and cfg.rl.steps == 4
    assert refit_to_budget(cfg, {}) is None  # nothing finished: nothing to measure
