"""Human verifier examples: the format and its ingestion, weighted labels and calibration of
the reflection network, the labelling loop (ranking, interruption, resume) and the bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_reflective import _tiny_model

from pdclm import io as pdclm_io
from pdclm.cli import main
from pdclm.cognition.ccm import Solution
from pdclm.cognition.reflection import (
    Reflector,
    Scores,
    calibrate,
    encode,
    reflection_loss,
    score,
    score_positions,
)
from pdclm.config import load_preset
from pdclm.data.episodes import Episode, Judged, format_episode
from pdclm.data.human import HumanExample, parse_lines, read_examples, split_by_question
from pdclm.data.tasks import make_source, training_items
from pdclm.eval import labelling
from pdclm.eval.claims import CLAIMS
from pdclm.eval.labelling import Assessed, Candidate, assess, label, rank
from pdclm.eval.tasks import eval_budget


def _line(**over) -> str:
    row = {
        "question": "Calculate 7 + 5.",
        "thinking": ["7 + 5 = 12"],
        "answer": "12",
        "verdict": "right",
        "annotator": "alice",
        "timestamp": "2026-11-25T02:00:00+00:00",
    }
    row.update(over)
    return json.dumps({k: v for k, v in row.items() if v is not None})


def test_prepare_reports_each_bad_line_with_its_number_and_ingests_the_rest(
    tmp_path, corpus, capsys
):
    lines = [
        _line(),
        "{not json",
        _line(verdict="maybe"),
        "",
        _line(answer="13", verdict="wrong", step_verdicts=["wrong"], reason="7 + 5 is 12"),
        _line(thinking=["a", "b"], step_verdicts=["right"]),
        _line(annotator=None),
        _line(verdit="right"),
        _line(question="Calculate 1 + 1.", thinking=[], answer="2", task="chain_sum", gold="2"),
    ]
    src = tmp_path / "verdicts.jsonl"
    src.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    args = ["prepare", "--preset", "tiny", "--data.dir", str(data), "--no-progress"]
    assert main([*args, "--data.sources", str(corpus), f"human:{src}"]) == 0
    err = capsys.readouterr().err
    for lineno, why in ((2, "JSON"), (3, "verdict"), (6, "step verdicts"), (7, "annotator")):
        assert f"{src}:{lineno}:" in err and why in err.split(f"{src}:{lineno}:")[1].split("\n")[0]
    assert f"{src}:8: unknown field(s) verdit" in err
    stored = read_examples(data / "human.jsonl")
    assert [ex.answer for ex in stored] == ["12", "13", "2"]
    assert stored[1].step_verdicts == (False,) and stored[1].reason == "7 + 5 is 12"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["human"]["examples"] == 3
    assert [s["line"].rsplit(":", 1)[1] for s in manifest["human"]["skipped"]] == list("23678")
    assert manifest["totals"]["train"]["docs"] > 0  # the text sources became shards as usual
    # the human file is re-read on every prepare (the shards are reused)
    src.write_text(_line() + "\n")
    assert main([*args, "--data.sources", str(corpus), f"human:{src}"]) == 0
    assert len(read_examples(data / "human.jsonl")) == 1
    assert main([*args, "--data.sources", str(corpus), f"human:{tmp_path}/nope.jsonl"]) == 2


def test_a_right_verdict_labels_every_step_and_splits_never_share_a_question():
    good, bad = parse_lines((_line() + "\n" + _line(verdict="wrong")).encode())
    assert not bad
    assert good[0].judged(4.0).step_ok == (True,) and good[0].judged(4.0).weight == 4.0
    assert good[1].judged().step_ok == (None,) and not good[1].judged().answer_ok
    examples = [
        HumanExample(f"q{i % 50}", (), str(i), i % 3 == 0, "a", "2026-01-01") for i in range(400)
    ]
    train, cal, held = split_by_question(examples, 0.25, 0.2)
    assert len(train) + len(cal) + len(held) == 400 and held and cal
    qs = [{ex.question for ex in part} for part in (train, cal, held)]
    assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])


def test_weighted_labels_and_calibration():
    ep = Episode("q?", ("1 + 1 = 2",), "2")
    batch = encode([Judged(ep, (True,), True, 1.0), Judged(ep, (False,), False, 3.0)])
    assert batch[3].tolist() == [1.0, 3.0]
    critic = Reflector(_tiny_model(), 1)
    loss, _ = reflection_loss(critic, batch)
    # the same episode labelled right (weight 1) and wrong (weight 3): a 1:3 weighted mean
    step_logit, answer_logit = critic(batch[0])
    steps, answer = score_positions(format_episode(ep))
    expected = sum(
        (F.softplus(-z) + 3 * F.softplus(z)) / 4
        for z in (step_logit[0, steps[0]], answer_logit[0, answer])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # calibration: labels that contradict the raw score flip it, and score() applies it
    eps = [Episode(f"q{i}?", (f"{i} + 1 = {i + 1}",), str(i + 1)) for i in range(40)]
    raw = [s.answer for s in score(critic, eps)]
    judged = [Judged(e, (), r < sorted(raw)[20], 1.0) for e, r in zip(eps, raw, strict=True)]
    fit = calibrate(critic, judged)
    assert fit["a"] < 1.0 and fit["bce_after"] < fit["bce_before"]
    cal = [s.answer for s in score(critic, eps)]
    low, high = min(range(40), key=raw.__getitem__), max(range(40), key=raw.__getitem__)
    assert cal[low] > cal[high]  # the calibrated order follows the verdicts
    state = {k: v.clone() for k, v in critic.state_dict().items()}
    again = Reflector(_tiny_model(), 1)
    again.load_state_dict(state)
    assert torch.equal(again.calibration, critic.calibration)
    del state["calibration"]  # a critic saved before calibration existed loads uncalibrated
    again.load_state_dict(state)
    assert again.calibration.tolist() == [1.0, 0.0]


def _assessed(answer: float, votes: int = 2, key: str = "") -> Assessed:
    item = make_source("arithmetic").sample(0, 1, 1)[0]
    sol = Solution(item.question, (), key or f"{answer}", False, 0)
    cand = Candidate(item, sol, 0, True, "test")
    channels = {"consistency": 0.0, "hallucination": 0.0, "justification": 0.0, "efficiency": 0.0}
    for name in labelling.JUDGING[:votes]:
        channels[name] = 1.0
    yes = (votes + (answer >= 0.5)) / 4
    return Assessed(
        cand, Scores((), answer), channels, (), True, 1 - abs(2 * answer - 1), 1 - abs(2 * yes - 1)
    )


def test_uncertainty_sampling_picks_the_most_uncertain_episodes_first():
    # channels agree with the critic everywhere (no disagreement): the critic's doubt decides
    sure = [_assessed(p, votes=3 if p >= 0.5 else 0) for p in (0.02, 0.97, 0.6, 0.45, 0.9, 0.2)]
    assert all(a.disagreement == 0 for a in sure)
    order = [a.scores.answer for a in rank(sure)]
    assert order == [0.45, 0.6, 0.2, 0.9, 0.97, 0.02]
    # a confident critic that the channels contradict is worth as much as an unsure one
    split = _assessed(0.99, votes=1)
    assert split.disagreement == 1.0
    assert rank([*sure, split])[0] is split
    # already labelled episodes and repeats are left out
    assert rank(sure, done={sure[3].candidate.key})[0].scores.answer == 0.6
    assert len(rank([sure[0], sure[0]])) == 1


def _pool(n: int = 6) -> list[Assessed]:
    cfg = load_preset("tiny")
    items = training_items(make_source("arithmetic"), 1, n, 3, set())
    cands = []
    for g, it in enumerate(items):
        for answer in (it.answer, str(int(it.answer) + 1)):
            sol = Solution(it.question, it.steps, answer, False, 10)
            cands.append(Candidate(it, sol, g, answer == it.answer, f"pool:{g}"))
    return assess(cands, Reflector(_tiny_model(), 1), eval_budget(cfg.tasks))


def test_an_interrupted_labelling_session_keeps_every_verdict_and_resumes(tmp_path, monkeypatch):
    pool = _pool()
    path = tmp_path / "verdicts.jsonl"
    answers = iter(["r", "", "w", "", "no reason", "s", "w", "1", "kill"])

    def person(prompt: str) -> str:
        a = next(answers)
        if a == "kill":
            raise KeyboardInterrupt
        return a

    stats = label(pool, path, "alice", ask=person, say=lambda _: None)
    assert stats["labelled"] == 2 and stats["skipped"] == 1
    first = read_examples(path)
    assert [ex.verdict for ex in first] == [True, False] and first[1].reason == "no reason"
    # killed while writing the next verdict: the file keeps the earlier ones, whole
    real = pdclm_io.os.replace
    monkeypatch.setattr(pdclm_io.os, "replace", lambda *a: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        label(pool, path, "alice", ask=lambda _: "r", say=lambda _: None)
    monkeypatch.setattr(pdclm_io.os, "replace", real)
    assert [ex.key for ex in read_examples(path)] == [ex.key for ex in first]
    # resumed: the labelled ones are not offered again, and every verdict ends up there once
    shown: list[str] = []
    stats = label(pool, path, "bob", ask=lambda q: "w" if "verdict" in q else "", say=shown.append)
    assert stats["already"] == 2 and stats["labelled"] == len(pool) - 2
    final = read_examples(path)
    assert len(final) == len(pool) and len({ex.key for ex in final}) == len(pool)
    assert final[:2] == first
    assert len(shown) == len(pool) - 2  # only the unlabelled ones were shown
    # the verifier fills verdicts without asking
    auto = tmp_path / "auto.jsonl"
    stats = label(pool, auto, "verifier", from_verifier=True, ask=None)
    ex = read_examples(auto)
    truth = {a.candidate.key: a.candidate.verified for a in pool}
    assert stats["labelled"] == len(pool) and all(e.verdict == truth[e.key] for e in ex)


def test_bench_human_runs_end_to_end_on_the_tiny_preset(tmp_path, corpus):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "human",
        "--preset",
        "tiny",
        "--data.dir",
        str(tmp_path / "data"),
        "--data.sources",
        str(corpus),
        "--train.steps",
        "10",
        "--cognitive.steps",
        "4",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "human.json"),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "human.json").read_text())
    assert (tmp_path / "human.png").exists() and (out / "bench_human.png").exists()
    assert result["held_out_disjoint_by_question"]
    counts = result["settings"]["counts"]
    for metric in ("auc", "agreement"):
        for curve in result["curves"][metric].values():
            assert [p["labels"] for p in curve] == counts
            assert all(p["mean"] is None or 0 <= p["mean"] <= 1 for p in curve)
    held = result["held_out"]
    assert held["examples"] > 0 and held["constant"] >= 0.5
    verdicts = read_examples(out / "verdicts.jsonl")
    assert len(verdicts) == result["labelled"]["labelled"] > 0
    assert all(v.annotator == "verifier" for v in verdicts)
    (claim,) = result["claims"]
    assert claim["claim"] == CLAIMS["human"] and claim["source"] == "pdclm bench human"
    assert claim["verdict"] in ("holds", "does not hold", "not measurable at this size")
    assert Path(result["run"]).name == "run"
    # the verdicts, prepared as human examples, join Phase 3 of the bench's run
    data = ["--data.dir", str(tmp_path / "data"), "--data.sources", str(corpus)]
    human = f"human:{out / 'verdicts.jsonl'}"
    assert main(["prepare", "--preset", "tiny", *data, human, "--no-progress"]) == 0
    assert len(read_examples(tmp_path / "data" / "human.jsonl")) == len(verdicts)
    p3 = tmp_path / "p3.json"
    run = ["train", "reflective", "--preset", "tiny", "--resume", result["run"], *data, human]
    small = ["--rl.steps", "2", "--rl.robustness-items", "1", "--tasks.sweep-items", "2"]
    assert main([*run, *small, "--no-progress", "--json", str(p3)]) == 0
    report = json.loads(p3.read_text())["phase3"]
    h = report["human"]
    assert h["train"] + h["calibration"] + h["held_out"]["examples"] == len(verdicts)
    assert h["held_out"]["constant"] >= 0.5 and "consistency" in h["held_out"]["channels"]
    trained = report["critic_trainings"][0]
    assert trained["examples"] >= h["train"]
    assert ("calibration" in trained) == (h["calibration"] > 0)
    # pdclm label on that run's Phase 3 rollouts: a rerun continues where the first stopped
    labels = tmp_path / "labels.jsonl"
    cmd = ["label", "--preset", "tiny", "--ckpt", result["run"], "--from-verifier"]
    cmd += ["--limit", "3", "--file", str(labels)]
    assert main(cmd) == 0 and len(read_examples(labels)) == 3
    assert main(cmd) == 0
    assert len({ex.key for ex in read_examples(labels)}) == 6
