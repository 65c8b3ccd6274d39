"""Phase 2: packing and loss weights, self-play keeps only verified episodes, and a tiny
Phase 2 run through the real phase lifts a learnable task above its constant baseline."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import pdclm.cognition.selfplay as selfplay
from pdclm import config
from pdclm.cognition.ccm import Budget, Solution
from pdclm.config import load_preset
from pdclm.data.episodes import Episode, format_episode, pack, weighted_symbols
from pdclm.data.generators import GENERATORS, Task
from pdclm.data.tasks import held_out, make_source, unanswerable
from pdclm.vocab import EOS, THINK


def test_packing_keeps_episodes_whole_and_weights_them():
    eps = [Episode(f"q{i}?", ("a step",), str(i)) for i in range(7)]
    weighted = [weighted_symbols(e, 0.25) for e in eps]
    tokens, weights = pack(weighted, rows=3, seq_len=40)
    assert all(len(t) == 41 for t in tokens) and all(len(w) == 40 for w in weights)
    for row, w in zip(tokens, weights, strict=True):
        # every episode in a row is whole: the row is episodes then padding
        symbols = list(row)
        while symbols and symbols[-1] == EOS and (not w or w[len(symbols) - 2] == 0):
            symbols.pop()
        n = 0
        for e in eps:
            f = format_episode(e)
            if symbols[n : n + len(f)] == f:
                n += len(f)
        assert n >= len(symbols) - 1
    sym, w = weighted[0]
    think = sym.index(THINK)
    assert w[0] == 0.0 and set(w[1 : think + 1]) == {0.25} and set(w[think + 1 :]) == {1.0}


def right_and_wrong(task: Task) -> tuple[Solution, Solution, Solution]:
    """A verified solution, a right answer with a broken step, and a wrong answer."""
    good = Solution(task.question, task.steps, task.answer, False, 10)
    broken = list(task.steps)
    broken[0] = broken[0] + "9"
    bad_step = Solution(task.question, tuple(broken), task.answer, False, 10)
    wrong = Solution(task.question, task.steps, task.answer + "1", False, 10)
    return good, bad_step, wrong


def test_self_play_keeps_only_verified_episodes(monkeypatch):
    rng = random.Random(3)
    gen = GENERATORS["arithmetic"]
    tasks = [gen.make(rng, 1) for _ in range(5)]
    opener = selfplay.opener("arithmetic")
    proposals = [t.question[len(opener) :] for t in tasks] + ["garbage", tasks[0].question[3:]]
    held_out = {tasks[3].question}

    def fake_complete(model, prompts, *args, **kwargs):
        return [list(p.encode()) for p in proposals]

    plans = {  # per task: the solver's 2 samples
        tasks[0].question: "good wrong",  # sometimes right -> kept as a proposal
        tasks[1].question: "wrong wrong",  # never right -> kept with the executor's gold trace
        tasks[2].question: "good good",  # always right -> too easy, dropped
        tasks[4].question: "bad_step wrong",  # right once, but never with sound steps: dropped
    }

    def fake_solve(model, questions: Sequence[str], budget, *args, **kwargs):
        out, used = [], {}
        for q in questions:
            task = gen.parse(q)
            good, bad_step, wrong = right_and_wrong(task)
            i = used[q] = used.get(q, -1) + 1
            out.append({"good": good, "bad_step": bad_step, "wrong": wrong}[plans[q].split()[i]])
        return out

    monkeypatch.setattr(selfplay, "complete", fake_complete)
    monkeypatch.setattr(selfplay, "solve", fake_solve)
    kept, stats = selfplay.propose_and_solve(
        None, ["arithmetic"], len(proposals), 2, Budget(), 0.7, held_out, torch.Generator()
    )
    assert stats["accepted"] == 4 and stats["rejected_held_out"] == 1
    assert stats["rejected_unparseable"] == 2 and stats["too_easy"] == 1
    by_q = {v.episode.question: v for v in kept}
    assert set(by_q) == {tasks[0].question, tasks[1].question}
    assert by_q[tasks[0].question].kind == "proposal"
    assert by_q[tasks[1].question].kind == "gold"
    for v in kept:  # whatever was kept passes the task's verifier and its step checker
        task = gen.parse(v.episode.question)
        assert gen.score(task, v.episode.answer) == 1.0
        assert all(gen.check_steps(task, v.episode.steps))


def test_dialogue_keeps_only_verified_transcripts(monkeypatch):
    src = make_source("arithmetic")
    items = src.sample(seed=5, level=1, n=3)
    items.append(unanswerable(items[2], random.Random(0)))  # a number hidden: "unknown" is right
    answers = {  # (round-1 answers, round-2 answers) per item
        items[0].question: ([items[0].answer, "0"], [items[0].answer, items[0].answer]),
        items[1].question: (["7", "8"], ["7", "7"]),  # agree on a wrong answer: dropped
        items[2].question: (["1", "2"], ["1", "2"]),
        items[3].question: (["unknown", "5"], ["unknown", "unknown"]),
    }

    def fake_solve(model, questions, budget, *args, **kwargs):
        out = []
        for j, q in enumerate(questions):  # agent j % 2; round 2 questions carry a context
            base, second = q.split("\n")[-1], "\n" in q
            item = next(it for it in items if it.question == base)
            out.append(Solution(q, item.steps, answers[base][second][j % 2], False, 5))
        return out

    monkeypatch.setattr(selfplay, "solve", fake_solve)
    kept, stats = selfplay.dialogue(None, items, 2, Budget(), 0.7, torch.Generator())
    assert [v.kind for v in kept] == ["dialogue", "dialogue"]
    ep = kept[0].episode
    assert ep.question.endswith(items[0].question) and "Other agents answered" in ep.question
    assert src.score(items[0], ep.answer) == 1.0
    assert kept[1].episode.answer == "unknown"
    assert stats["accuracy_final"] == pytest.approx(2 / 4)


class Parity:
    """A tiny learnable task for the phase test: is a number even or odd?"""

    name = "parity"
    _Q = re.compile(r"Is (\d+) even or odd\?")

    def make(self, rng: random.Random, level: int) -> Task:
        return self._build(rng.randint(0, 99_999))

    def _build(self, n: int) -> Task:
        return Task(self.name, 1, f"Is {n} even or odd?", (), "odd" if n % 2 else "even", {})

    def parse(self, question: str) -> Task | None:
        m = self._Q.fullmatch(question)
        return self._build(int(m[1])) if m else None

    def score(self, task: Task, answer: str) -> float:
        return float(answer.strip() == task.answer)

    def check_steps(self, task: Task, steps: Sequence[str]) -> list[bool]:
        return [False] * len(steps)


def parity_config(corpus, tmp: Path):
    cfg = load_preset("tiny")
    cfg.data.sources, cfg.data.dir = [str(corpus)], str(tmp / "data")
    cfg.pse.patcher.rule = "whitespace"  # meaningful patches without a trained entropy model
    cfg.tasks.names, cfg.tasks.eval_items, cfg.tasks.budgets = ["parity"], 40, [0]
    cfg.cognitive.steps, cfg.cognitive.rounds, cfg.cognitive.lr = 150, 2, 3e-3
    cfg.cognitive.batch = 8
    cfg.cognitive.episodes_per_round, cfg.cognitive.text_share = 1000, 0.0
    return cfg


@pytest.fixture(scope="module")
def parity_run(corpus, tmp_path_factory):
    """One tiny Phase 2 run on the parity task (from an untrained "Phase 1" model)."""
    from pdclm.data.ingest import prepare
    from pdclm.model.io import save_model
    from pdclm.model.pdclm import PDCLM
    from pdclm.pipeline import run_phases

    tmp = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(GENERATORS, "parity", Parity())
        mp.setattr(config, "GENERATED_TASKS", (*config.GENERATED_TASKS, "parity"))
        cfg = parity_config(corpus, tmp)
        run = tmp / "run"
        torch.manual_seed(0)
        save_model(PDCLM(cfg.pse, cfg.model), cfg, run / "model")
        prepare(cfg.data, progress=False)
        report = run_phases(cfg, run, progress=False, only=["cognitive"])
    return tmp, run, report


def test_a_tiny_phase2_run_lifts_a_task_above_its_constant_baseline(parity_run):
    _, run, report = parity_run
    parity = report["phase2"]["tasks"]["parity"]
    assert parity["accuracy"] >= parity["constant_baseline"] + 0.3, parity
    rounds = list((run / "cognitive" / "rounds").glob("round_*.jsonl"))
    assert len(rounds) == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(GENERATORS, "parity", Parity())
        mp.setattr(config, "GENERATED_TASKS", (*config.GENERATED_TASKS, "parity"))
        held = {it.question for it in held_out(make_source("parity"), 1, 40)}
    trained = {json.loads(line)["question"] for r in rounds for line in r.read_text().splitlines()}
    assert trained and not trained & held


def test_a_tiny_phase3_run_raises_the_correctness_reward(parity_run, corpus, monkeypatch):
    from pdclm.pipeline import run_phases

    tmp, phase2_run, _ = parity_run
    monkeypatch.setitem(GENERATORS, "parity", Parity())
    monkeypatch.setattr(config, "GENERATED_TASKS", (*config.GENERATED_TASKS, "parity"))
    cfg = parity_config(corpus, tmp)
    cfg.rl.steps, cfg.rl.prompts, cfg.rl.group = 24, 8, 8
    cfg.rl.temperature, cfg.rl.lr, cfg.rl.kl = 1.5, 2e-3, 0.0
    cfg.rl.reflect_every, cfg.rl.robustness_items = 24, 4
    run = tmp / "phase3"
    shutil.copytree(phase2_run / "model", run / "model")
    report = run_phases(cfg, run, progress=False, only=["reflective"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reward = [r["correctness"] for r in rows if r["phase"] == "phase3/grpo"]
    assert len(reward) == 24
    first, last = sum(reward[:6]) / 6, sum(reward[-6:]) / 6
    assert last >= first + 0.1, reward
    assert {"correctness", "consistency", "justification", "efficiency", "hallucination"} <= set(
        rows[-1]
    )
    p3 = report["phase3"]
    assert p3["tasks"]["parity"]["n"] == 40 and "reflect" in p3["robustness"]
