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


def test_phase2_reports_dev_accuracy_against_steps_and_question_spaces(parity_run):
    _, run, report = parity_run
    p2 = report["phase2"]
    record = p2["accuracy_vs_steps"]
    assert [r["round"] for r in record] == [0, 1]  # one entry per round...
    assert [r["step"] for r in record] == [0, 75]  # ...at the step its probe ran (150 / 2)
    for r, meta in zip(record, p2["rounds"], strict=True):
        assert r["step"] == meta["probe_step"] and r["tasks"] == meta["probe_success"]
        assert set(r["tasks"]) == {"parity"} and r["mean"] == r["tasks"]["parity"]
        assert r["levels"] == meta["probe_levels"] and 0 <= r["mean"] <= 1
    assert "phase2_accuracy_vs_steps.png" in p2["plots"]
    assert (run / "phase2_accuracy_vs_steps.png").stat().st_size > 10_000
    spaces = p2["question_space"]
    assert spaces["draws"] == 2000 and spaces["seconds"] < 10
    rows = {r["level"]: r for r in spaces["rows"]}
    assert sorted(rows) == [1, 2, 3, 4, 5] and {r["task"] for r in rows.values()} == {"parity"}
    assert [rows[k]["held_out"] for k in rows] == [40 + 4, 4, 4, 4, 4]  # eval + dev, dev
    one = rows[1]  # parity asks about 0..99,999: sampled, never exact
    assert not one["exact"] and 30_000 < one["estimate"] < 300_000
    assert one["held_out_share"] == pytest.approx(44 / one["estimate"])


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


def test_the_curriculum_probe_never_sees_a_trained_question(tmp_path, monkeypatch):
    """The probe asks development questions: fixed per task and level, disjoint from the final
    evaluation's, and absent from every round's training episodes, self-play included (hanoi's
    level 1 has 78 questions, so a probe drawn from the training stream would overlap the 300
    episodes). Generation is faked: the probe answers right (so levels rise), the proposer
    proposes development questions, the solvers answer wrong."""
    import pdclm.train.cognitive as cognitive
    from pdclm.eval.tasks import dev_sets, held_out_sets

    cfg = load_preset("tiny")
    cfg.cognitive.text_share, cfg.cognitive.episodes_per_round = 0.0, 300
    sets = held_out_sets(cfg.tasks)
    data = cognitive.RoundData(cfg, tmp_path / "rounds", sets, None)  # no text rows
    probed: list[list] = []

    def probe_answers_right(model, items, *args, **kwargs):  # only the probe calls run_items
        probed.append(list(items))
        return [Solution(it.question, it.steps, it.answer, False, 1) for it in items]

    def proposes_dev_questions(model, prompts, *args, **kwargs):
        out = []
        for j, prompt in enumerate(prompts):
            opened = bytes(prompt[1:]).decode()
            name = "hanoi" if opened.startswith("Tower") else "arithmetic"
            fresh = (it for s in range(99) for it in make_source(name).sample(s, 1, 1))
            q = (
                data.dev[name][1][0].question
                if j < 2
                else next(it.question for it in fresh if it.question not in data.exclude)
            )
            out.append(list(q[len(opened) :].encode()))
        return out

    def answers_wrong(model, questions, *args, **kwargs):
        return [Solution(q, (), "", False, 0) for q in questions]

    monkeypatch.setattr(cognitive, "run_items", probe_answers_right)
    monkeypatch.setattr(cognitive, "gold_bits", lambda model, items, *a, **k: [1.0] * len(items))
    monkeypatch.setattr(selfplay, "complete", proposes_dev_questions)
    monkeypatch.setattr(selfplay, "solve", answers_wrong)
    metas = [data.build(r, torch.nn.Identity(), progress=False) for r in range(2)]

    evaluation = {it.question for items in sets.values() for it in items}
    dev = {it.question for it in data.dev_items()}
    assert {name: sorted(levels) for name, levels in data.dev.items()} == {
        "chain_sum": [1, 2, 3],
        "spell_backward": [1, 2, 3],
        "arithmetic": [1, 2, 3, 4, 5],
        "hanoi": [1, 2, 3, 4, 5],
    }
    assert all(len(items) == 4 for v in data.dev.values() for items in v.values())
    assert not dev & evaluation and dev | evaluation <= data.exclude
    phase3 = dev_sets(cfg.tasks, cfg.rl.probe_items, sets)  # Phase 3's probe: never trained
    assert {it.question for items in phase3.values() for it in items} <= data.exclude
    again = cognitive.RoundData(cfg, tmp_path / "rounds", sets, None)  # what a resume rebuilds
    assert [it.question for it in again.dev_items()] == [it.question for it in data.dev_items()]
    trained = set()
    for r in range(2):
        for line in data.paths(r)[0].read_text().splitlines():
            row = json.loads(line)
            q = row["question"]  # a dialogue episode: other agents' answers, then the question
            trained.add(q.split("\n", 1)[1] if row["kind"] == "dialogue" else q)
    assert sum(q.startswith("Tower of Hanoi") for q in trained) > 30
    assert len(probed) == 2
    for meta, items in zip(metas, probed, strict=True):
        asked = {it.question for it in items}
        assert asked and asked <= dev and not asked & trained and not asked & evaluation
        for it in items:  # each task at the level it had when the probe began
            assert it.level == meta["probe_levels"][it.source]
            assert it in data.dev[it.source][it.level]
        assert meta["proposer"]["rejected_held_out"] == 2 and meta["proposer"]["accepted"] == 2
        assert meta["episodes"]["gold"] == 2 and meta["episodes"]["dialogue"] == 0
    assert not dev & trained  # every level's development set, not just the probed ones
    assert set(metas[0]["probe_levels"].values()) == {1}  # all right: every task moved up
    assert set(metas[1]["probe_levels"].values()) == {2}
    assert [m["probe_step"] for m in metas] == [0, cognitive.round_bounds(cfg)[0]]


def test_phase2_spends_its_episodes_where_accuracy_is_rising(tmp_path):
    """``cognitive.mix = progress``: weight = (1 - success) x the relative fall of the gold
    bits since the last probe at the same level (over the largest fall); unknown falls count
    as the largest; solved or stalled tasks keep the floor."""
    import pdclm.train.cognitive as cognitive
    from pdclm.eval.tasks import held_out_sets

    cfg = load_preset("tiny")  # chain_sum, spell_backward, arithmetic, hanoi
    cfg.cognitive.text_share, cfg.cognitive.mix = 0.0, "progress"  # no text rows
    data = cognitive.RoundData(cfg, tmp_path, held_out_sets(cfg.tasks), None)
    names = list(cfg.tasks.names)
    ones = dict.fromkeys(names, 1)
    assert data.task_weights(dict.fromkeys(names, 0.0), {}, ones, None) == dict.fromkeys(names, 1.0)
    prev = {
        "probe_bits": {"chain_sum": 2.0, "spell_backward": 2.0, "arithmetic": 1.0, "hanoi": 3.0},
        "probe_levels": {**ones, "hanoi": 2},  # hanoi's level moved since: its fall is unknown
    }
    bits = {"chain_sum": 1.0, "spell_backward": 1.8, "arithmetic": 1.1, "hanoi": 2.0}
    success = {"chain_sum": 0.5, "spell_backward": 0.0, "arithmetic": 0.0, "hanoi": 0.0}
    w = data.task_weights(success, bits, ones, prev)
    # chain_sum 0.5 x (0.5 / 0.5); spell_backward 1 x (0.1 / 0.5); arithmetic rose; hanoi 1 x 1
    assert w == pytest.approx(
        {"chain_sum": 0.5, "spell_backward": 0.2, "arithmetic": 0.1, "hanoi": 1}
    )
    solved = data.task_weights({**success, "hanoi": 1.0}, bits, ones, prev)
    assert solved["hanoi"] == 0.1 and solved["chain_sum"] == 1.0  # the floor; the new top
    cfg.cognitive.mix = "gap"
    assert data.task_weights(success, bits, ones, prev) == pytest.approx(
        {"chain_sum": 0.5, "spell_backward": 1.0, "arithmetic": 1.0, "hanoi": 1.0}
    )
    cfg.cognitive.mix = "variance"
    assert data.task_weights(success, bits, ones, prev) == data.curriculum.weights()


def test_phase2_keeps_half_of_a_raised_tasks_episodes_at_the_evaluated_level(tmp_path):
    """The final evaluation asks ``tasks.eval_level``: a task the curriculum has moved past
    it still spends half its episodes there, the other half at its present level."""
    import pdclm.train.cognitive as cognitive
    from pdclm.eval.tasks import held_out_sets

    cfg = load_preset("tiny")
    cfg.cognitive.text_share, cfg.cognitive.unanswerable_share = 0.0, 0.0
    cfg.tasks.names = ["chain_sum"]
    data = cognitive.RoundData(cfg, tmp_path, held_out_sets(cfg.tasks), None)
    data.curriculum.level["chain_sum"] = 3
    items = data.sample_items(200, random.Random(0), 1)
    levels = [it.level for it in items]
    assert levels.count(1) == levels.count(3) == 100


def test_gold_bits_read_each_item_alone(corpus, tmp_path):
    """Teacher-forced bits of the gold thinking and answer: the same whether an item is read
    alone or padded in a batch beside longer ones, and equal to the training loss of its row."""
    from pdclm.data.tasks import Item
    from pdclm.eval.tasks import gold_bits
    from pdclm.model.pdclm import LN2, PDCLM
    from pdclm.train.objectives import weighted_lm_loss

    cfg = load_preset("tiny")
    torch.manual_seed(0)
    model = PDCLM(cfg.pse, cfg.model).eval()
    items = [
        Item("arithmetic", 1, "Compute 2 + 3.", "5", ("2 + 3 = 5",)),
        Item(
            "arithmetic",
            1,
            "Compute 12 + 7 * 3 - 5.",
            "28",
            ("7 * 3 = 21", "12 + 21 = 33", "33 - 5 = 28"),
        ),
        Item("spell_backward", 1, "Spell this word backward: dis", "sid"),
    ]
    together = gold_bits(model, items, bf16=False)
    alone = [gold_bits(model, [it], bf16=False)[0] for it in items]
    assert together == pytest.approx(alone, rel=1e-4)
    symbols, weights = weighted_symbols(Episode(items[1].question, items[1].steps, "28"), 0.0)
    with torch.no_grad():
        loss, _ = weighted_lm_loss(model, (torch.tensor([symbols]), torch.tensor([weights[1:]])))
    assert together[1] == pytest.approx(float(loss) / LN2, rel=1e-4)
    assert len(set(together)) == 3 and all(0 < b < 20 for b in together)


def test_phase2_keeps_its_text_share_over_steps_at_any_batch(corpus, tmp_path):
    """2 rows at ``text_share`` 0.15: 0.3 text rows a batch, so 30 of the first 100 batches
    carry one (numbered 0..29 across the phase), none carries two, every batch is 2 rows,
    and a batch is the same when built again (a resumed run)."""
    import pdclm.train.cognitive as cognitive
    from pdclm.data.ingest import prepare
    from pdclm.data.shards import ShardSet
    from pdclm.eval.tasks import held_out_sets

    cfg = load_preset("tiny")
    cfg.data.sources, cfg.data.dir = [str(corpus)], str(tmp_path / "data")
    cfg.cognitive.batch, cfg.cognitive.text_share, cfg.cognitive.seq_len = 2, 0.15, 128
    prepare(cfg.data, progress=False)
    text = ShardSet.open(cfg.data.dir, "train")
    data = cognitive.RoundData(cfg, tmp_path / "rounds", held_out_sets(cfg.tasks), text)
    rows = [data.text_rows(i) for i in range(100)]
    assert [k for r in rows for k in r] == list(range(30)) and max(map(len, rows)) == 1
    episodes = [{"question": "Compute 2 + 3.", "steps": ["2 + 3 = 5"], "answer": "5"}]
    data.folder.mkdir(parents=True)
    rec = {"kind": "curriculum", "task": "arithmetic", "question_weight": 0.1}
    data.paths(0)[0].write_text("\n".join(json.dumps(e | rec) for e in episodes))
    with_text = next(i for i, r in enumerate(rows) if r)
    t, w = data.batch(with_text)
    # the text row: every byte counts (a document boundary's control symbols are no bytes: the
    # window is random, so it may cross one)
    assert t.shape == (2, 129) and torch.equal(w[1], (t[1, 1:] < 256).float())
    assert float(w[1].sum()) > 100
    assert torch.equal(t, data.batch(with_text)[0])
    assert not data.text_rows(next(i for i, r in enumerate(rows) if not r))
    cfg.cognitive.text_share = 0.9  # 1.8 a batch: capped so one row stays episodes
    assert all(len(data.text_rows(i)) <= 1 for i in range(50))


def test_phase2_fills_its_rows_with_episodes(tmp_path):
    """Packing draws twice the episodes that would fill the rows on average, so padding is a
    small share of a step (drawing just enough left ~0.2 of every row padding)."""
    import pdclm.train.cognitive as cognitive
    from pdclm.eval.tasks import held_out_sets

    cfg = load_preset("tiny")
    cfg.cognitive.batch, cfg.cognitive.text_share, cfg.cognitive.seq_len = 4, 0.0, 256
    cfg.cognitive.steps = 40 * cfg.cognitive.rounds
    data = cognitive.RoundData(cfg, tmp_path / "rounds", held_out_sets(cfg.tasks), None)
    rng = random.Random(0)
    rec = {"kind": "curriculum", "task": "arithmetic", "question_weight": 0.1, "answer": "1"}
    episodes = [
        {"question": f"Question {i}?", "steps": ["x" * rng.randint(10, 150)]} | rec
        for i in range(200)
    ]
    data.folder.mkdir(parents=True)
    data.paths(0)[0].write_text("\n".join(json.dumps(e) for e in episodes))
    fill = [float((data.batch(i)[1] > 0).float().mean()) for i in range(40)]  # round 0's
    assert sum(fill) / len(fill) > 0.9
