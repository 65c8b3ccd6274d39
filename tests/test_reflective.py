"""Phase 3: reward channels, group-relative advantages, the clipped objective, the reflection
network, robustness perturbations, the unanswerable-question transform, and the development
probe that keeps the best model (and seeds the prompt curriculum)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from safetensors.torch import load_file

import pdclm.cognition.reflection as reflection
import pdclm.train.reflective as reflective
from pdclm.cognition.ccm import Budget, Solution, check, solve
from pdclm.cognition.reflection import Reflector, corrupt_text, gold_pair, score, score_positions
from pdclm.cognition.rewards import (
    CHANNELS,
    Rollout,
    advantages,
    group_normalise,
    score_channels,
    ungrounded,
)
from pdclm.config import RewardsConfig, load_preset
from pdclm.data.episodes import Episode, format_episode, prompt
from pdclm.data.generators import GENERATORS
from pdclm.data.tasks import (
    UNANSWERABLE,
    Item,
    constant_baseline,
    make_source,
    training_items,
    unanswerable,
    verify,
)
from pdclm.eval.reflection import robustness_tasks
from pdclm.eval.robustness import perturb, template_words
from pdclm.model.io import save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.critic import train_reflector
from pdclm.train.grpo import action_logprobs, clipped_objective, grpo_loss_fn, rollout_tensors
from pdclm.train.phase import RunContext
from pdclm.train.reflective import RolloutBatches, held_out_questions, probe_windows
from pdclm.vocab import END_THINK, EOS


def _arith(seed: int = 0, level: int = 1) -> Item:
    return make_source("arithmetic").sample(seed, level, 1)[0]


def _rollout(item: Item, steps, answer, group=0, thinking_bytes=None, forced=False, scores=()):
    sol = Solution(
        item.question, tuple(steps), answer, forced, thinking_bytes or len("\n".join(steps))
    )
    budget = Budget(16, 256, 64)
    return Rollout(
        item,
        sol,
        verify(item, answer),
        check(sol.steps, answer, item.task),
        group,
        budget,
        tuple(scores),
    )


# ------------------------------------------------------------------------------- rewards
def test_each_channel_scores_a_planted_good_episode_above_a_bad_one():
    item = _arith()
    good = _rollout(
        item, item.steps, item.answer, thinking_bytes=20, scores=[0.9] * len(item.steps)
    )
    # right answer, but a made-up step (a wrong number never seen before), more thinking
    bad_steps = list(item.steps)
    bad_steps[0] = corrupt_text(bad_steps[0], random.Random(1))
    bad = _rollout(item, bad_steps, item.answer, thinking_bytes=200, scores=[0.2] * len(item.steps))
    wrong = _rollout(item, item.steps, str(int(item.answer) + 1))
    ch = score_channels([good, bad, wrong])
    assert ch["correctness"].tolist() == [1.0, 1.0, 0.0]
    for c in ("consistency", "justification", "efficiency", "hallucination"):
        assert ch[c][0] > ch[c][1], (c, ch[c])
    # unanswerable: saying so beats making up a number
    hidden = unanswerable(item, random.Random(0))
    assert hidden is not None and hidden.answer == UNANSWERABLE
    said = _rollout(hidden, hidden.steps, "unknown")
    made_up = _rollout(hidden, item.steps, item.answer)
    h = score_channels([said, made_up])["hallucination"]
    assert h.tolist() == [1.0, 0.0]


def test_auxiliary_channels_pay_nothing_on_a_wrong_answer():
    item = _arith(3)
    perfect_but_wrong = _rollout(item, item.steps, "123456", scores=[1.0] * len(item.steps))
    ch = score_channels([perfect_but_wrong])
    assert all(float(ch[c][0]) == 0.0 for c in CHANNELS)


def test_ungrounded_counts_new_numbers_in_refuted_steps_only():
    from pdclm.cognition.ccm import Verdict

    v = Verdict((True, False, None), None)
    bad, total = ungrounded("add 2 and 3", ["2 + 3 = 5", "5 * 7 = 99", "so 41"], v)
    assert (bad, total) == (2, 7)  # 7 and 99 appear from nowhere in the refuted step


@pytest.mark.parametrize("aggregate", ["channel", "sum"])
def test_advantages_are_zero_mean_per_group_and_zero_for_constant_groups(aggregate):
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    ch = {c: torch.rand(8) for c in CHANNELS}
    for c in CHANNELS:
        ch[c][3:6] = 0.5  # group 1: every channel constant
    adv = advantages(ch, g, RewardsConfig(aggregate=aggregate))
    for k in range(3):
        assert abs(float(adv[g == k].mean())) < 1e-5
    assert torch.all(adv[3:6] == 0)
    assert adv[:3].abs().sum() > 0
    x = group_normalise(torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1]))
    assert x.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-4)


# ------------------------------------------------------------------------------- objective
def test_clipped_objective_matches_a_hand_computed_example():
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]]))
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, clip_share = clipped_objective(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # row 0 (A=2): min(1.5*2, 1.28*2)=2.56, min(0.5*2, 0.8*2)=1.0, 1*2=2
    # row 1 (A=-1): min(-1.5, -1.28)=-1.5, min(-0.5, -0.8)=-0.8, (masked)
    expected = -(2.56 + 1.0 + 2.0 - 1.5 - 0.8) / 5
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(clip_share) == pytest.approx(4 / 5)  # every ratio != 1 among the 5 actions


def _tiny_model() -> PDCLM:
    cfg = load_preset("tiny")
    cfg.pse.patcher.rule = "whitespace"
    torch.manual_seed(0)
    return PDCLM(cfg.pse, cfg.model)


def test_a_zero_advantage_group_contributes_no_gradient_and_actions_are_logged():
    model = _tiny_model()
    sols = solve(
        model,
        ["What is 1 + 1?", "Say hi."],
        Budget(2, 12, 4),
        1.0,
        generator=torch.Generator().manual_seed(0),
    )
    for s in sols:  # actions sit where the model chose; the prompt and forced symbols are -1
        assert len(s.symbols) == len(s.actions) and s.symbols[-1] == EOS
        assert s.actions[0] == -1 and END_THINK in s.symbols
    tokens, actions = rollout_tensors(sols, pad=EOS)
    old = action_logprobs(model, tokens, actions).detach()
    loss_fn = grpo_loss_fn(0.2, 0.28, 0.1, ["x"])
    batch = (tokens, actions, torch.zeros(2), old, old, torch.tensor([0.0]))
    loss, _ = loss_fn(model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    model.zero_grad()
    loss, m = loss_fn(
        model, (tokens, actions, torch.tensor([1.0, -1.0]), old, old, torch.tensor([0.5]))
    )
    loss.backward()
    assert any(torch.count_nonzero(p.grad) for p in model.parameters() if p.grad is not None)
    assert m["x"] == 0.5 and m["clip_share"] == 0.0  # on-policy: ratio 1, nothing clipped


# ------------------------------------------------------------------------------ reflection
def test_score_positions_read_each_step_end_and_the_answer():
    symbols = format_episode(Episode("q?", ("a = 1", "b = 2"), "3"))
    steps, answer = score_positions(symbols)
    assert [bytes([symbols[p]]) if symbols[p] < 256 else symbols[p] for p in steps] == [
        b"\n",
        END_THINK,
    ]
    assert symbols[answer] == EOS


def test_gold_pairs_corrupt_exactly_one_step_and_keep_later_steps_unlabelled():
    rng = random.Random(0)
    pairs = [
        gold_pair(it, rng) for it in training_items(make_source("arithmetic"), 2, 40, 5, set())
    ]
    twins = [p[1] for p in pairs if len(p) == 2]
    assert len(twins) >= 30
    for gold, twin in (p for p in pairs if len(p) == 2):
        assert gold.answer_ok and not twin.answer_ok
        if False in twin.step_ok:
            i = twin.step_ok.index(False)
            assert twin.episode.steps[i] != gold.episode.steps[i]
            assert twin.episode.steps[:i] == gold.episode.steps[:i]
            assert all(x is None for x in twin.step_ok[i + 1 :])
        else:
            assert twin.episode.answer != gold.episode.answer


def test_a_revision_replaces_an_answer_only_when_checked_and_trusted(monkeypatch):
    """Four questions, one greedy answer and one revision each (scores fixed): a revision
    with a refuted step, or one the reflector doubts, never replaces the answer; a checked,
    trusted one does, also where the greedy answer's own steps were refuted."""
    counted = ("9 + 5", "10 + 4", "11 + 3", "12 + 2", "13 + 1", "14 + 0 = 14")
    slipped = ("9 + 5", "10 + 4", "12 + 3", "13 + 2", "14 + 1", "15 + 0 = 15")
    other = ("9 + 4 = 13",)  # consistent, but not this question: only the reflector can tell
    greedy = {"a": (counted, 0.4), "b": (counted, 0.4), "c": (counted, 0.4), "d": (slipped, 0.9)}
    revised = {"a": (slipped, 0.9), "b": (other, 0.45), "c": (other, 0.8), "d": (counted, 0.6)}
    table = {
        **{(q, s): p for q, (s, p) in greedy.items()},
        **{(q, s): p for q, (s, p) in revised.items()},
    }

    resumed: dict[str, str] = {}

    def fake_solve(policy, questions, budget, temperature=0.0, prefixes=None, **_):
        pick = revised if temperature else greedy
        resumed.update(zip(questions, prefixes or (), strict=False))
        return [
            Solution(q, pick[q][0], pick[q][0][-1].split(" = ")[-1], False, 0) for q in questions
        ]

    def fake_score(reflector, episodes):
        return [
            reflection.Scores((0.9,) * len(e.steps), table[e.question, e.steps]) for e in episodes
        ]

    monkeypatch.setattr(reflection, "solve", fake_solve)
    monkeypatch.setattr(reflection, "score", fake_score)
    cfg = dataclasses.replace(load_preset("tiny").rl.reflection, rounds=1, samples=1)
    history = reflection.reflect_and_revise(None, None, list("abcd"), Budget(4, 64, 8), cfg)
    chosen = {q: h[-1].solution.answer for q, h in zip("abcd", history, strict=True)}
    assert chosen == {"a": "14", "b": "14", "c": "13", "d": "14"}
    assert all(len(h) >= 2 for h in history)  # every question was revised once
    # a refuted answer resumes before its refuted step, a doubted one after its last step
    assert resumed["d"] == "9 + 5\n10 + 4\n" and resumed["a"] == "".join(s + "\n" for s in counted)


def test_the_reflection_network_ranks_a_corrupted_trace_below_its_correct_twin(tmp_path):
    cfg = load_preset("tiny")
    rf = dataclasses.replace(cfg.rl.reflection, steps=80, batch=16, lr=3e-3)
    policy = _tiny_model()
    critic = Reflector(policy, 1)
    rng = random.Random(0)
    # the answer must equal the last derived value: a wrong answer under right steps
    items = training_items(make_source("chain_sum"), 1, 400, 1, set())

    def twin(it):
        bad = str(int(it.answer) + rng.choice([-2, -1, 1, 2]))
        return [
            gold_pair(it, rng)[0],
            dataclasses.replace(
                gold_pair(it, rng)[0], episode=Episode(it.question, it.steps, bad), answer_ok=False
            ),
        ]

    train = [j for it in items[:300] for j in twin(it)]
    train_reflector(critic, train, rf, tmp_path, bf16=False, seed=0, device="cpu")
    test = [j for it in items[300:] for j in twin(it)]
    s = score(critic, [j.episode for j in test])
    right = sum(s[2 * i].answer > s[2 * i + 1].answer for i in range(len(test) // 2))
    assert right / (len(test) // 2) >= 0.8, right


# ------------------------------------------------------------------------- robustness, tasks
def test_perturbations_touch_instruction_words_only():
    items = make_source("spell_backward").sample(1, 1, 30)
    template = template_words([it.question for it in items])
    rng = random.Random(0)
    for it in items:
        noisy = perturb(it.question, template, rng)
        assert noisy != it.question
        word = it.question.split()[-1]  # the word to spell is content: never touched
        assert noisy.split()[-1] == word or word in template
        assert (
            make_source("spell_backward").score(dataclasses.replace(it, question=noisy), it.answer)
            == 1.0
        )


def test_unanswerable_questions_hide_a_number_and_want_that_said():
    rng = random.Random(0)
    for name in ("arithmetic", "bank", "chain_sum"):
        it = make_source(name).sample(2, 1, 1)[0]
        hidden = unanswerable(it, rng)
        assert hidden is not None and hidden.question != it.question
        assert verify(hidden, " Unknown ") and not verify(hidden, it.answer)
    assert unanswerable(make_source("hanoi").sample(2, 1, 1)[0], rng) is None
    assert math.isclose(float(verify(_arith(), _arith().answer)), 1.0)
    assert "arithmetic" in GENERATORS


# ------------------------------------------------------------------- best model by the probe
def test_no_development_or_evaluation_question_is_ever_a_phase3_prompt(tmp_path):
    """chain_sum's level 1 asks ~200 distinct questions: 40 updates of 16 prompts draw most of
    them, so any development question left out of the exclusion would be asked."""
    cfg = load_preset("tiny")
    cfg.tasks.names, cfg.rl.probe_items = ["chain_sum"], 8
    sets, dev, exclude = held_out_questions(cfg)
    dev_q = {it.question for it in dev["chain_sum"]}
    eval_q = {it.question for it in sets["chain_sum"]}
    assert len(dev_q) == 8 and len(eval_q) == cfg.tasks.eval_items and not dev_q & eval_q
    assert dev_q | eval_q == exclude

    def asked(excluded: set[str]) -> set[str]:  # prompts need no model
        data = RolloutBatches(cfg, tmp_path, None, None, None, excluded)
        return {it.question for k in range(-1, 40) for it in data.prompts(k, 16)}

    assert asked(eval_q) & dev_q  # a leak would show: excluding only the evaluation leaks
    assert not asked(exclude) & exclude
    cfg.rl.probe_items = 0  # no probe: only the evaluation is held out
    assert held_out_questions(cfg)[1:] == ({}, eval_q)


def test_the_start_probe_steers_the_first_prompts_to_tasks_solved_sometimes(tmp_path):
    """Before any rollout the curriculum knows the Phase 2 model's development accuracy: a task
    it never solves (no advantage in its groups) gets few prompts, one solved half the time
    most; a resumed run, seeded from the same probe record, asks the same questions."""
    cfg = load_preset("tiny")
    cfg.tasks.names, cfg.rl.unanswerable_share = ["chain_sum", "arithmetic"], 0.0

    def share(prior: dict[str, float] | None) -> tuple[float, list[str]]:
        data = RolloutBatches(cfg, tmp_path, None, None, None, set())
        if prior is not None:
            data.start_from(prior, dict.fromkeys(prior, 8))
        items = data.prompts(0, 400)
        return sum(it.source == "arithmetic" for it in items) / 400, [it.question for it in items]

    unseeded, _ = share(None)
    seeded, asked = share({"chain_sum": 0.0, "arithmetic": 0.5})
    assert 0.4 < unseeded < 0.6 and seeded > 0.75  # weights 0.05 : 0.25
    assert share({"chain_sum": 0.0, "arithmetic": 0.5})[1] == asked


def _fake_solution(it: Item, right: bool) -> Solution:
    """A rollout as generation returns it (symbols and the policy's actions), instantly."""
    steps, answer = ("so",), it.answer if right else it.answer + "9"
    symbols = format_episode(Episode(it.question, steps, answer))
    n = len(prompt(it.question))
    return Solution(
        it.question, steps, answer, False, 2, tuple(symbols), (-1,) * n + tuple(symbols[n:])
    )


def _phase3(tmp_path, monkeypatch, scores: dict[int, float], updates: list[int], kill_at=None):
    """Phase 3 on the tiny preset (4 updates, probed after 0, 2 and 4) from an untrained
    "Phase 2" model, with instant rollouts (every other sample right: every group informative)
    and a probe that returns ``scores`` by update: it expects to probe ``updates`` in this
    process, in order, and records the weights it probed. The final evaluation is skipped;
    ``kill_at``: the run is killed when it asks for that step's batch."""
    cfg = load_preset("tiny")
    cfg.data.dir = str(tmp_path / "data")
    cfg.pse.patcher.rule = "whitespace"
    cfg.tasks.names = ["chain_sum", "arithmetic"]  # short questions: a quick critic
    cfg.rl.prompts, cfg.rl.group, cfg.rl.lr, cfg.rl.reflect_every = 2, 2, 1e-2, 4
    cfg.rl.probe_alpha = 1.0  # any gain counts (4 questions can show no significant one)
    rf = cfg.rl.reflection
    rf.steps, rf.batch, rf.items, rf.rollouts = 1, 4, 4, 4
    assert probe_windows(cfg.rl) == [2, 4]
    run = tmp_path / "run"
    resume = (run / "model").exists()
    if not resume:
        save_model(_tiny_model(), cfg, run / "model")
    probed: dict[int, dict[str, torch.Tensor]] = {}
    expected = iter(updates)

    def probe(policy, dev, cfg_):
        assert sum(map(len, dev.values())) == 2 * len(cfg.tasks.names)
        update = next(expected)
        probed[update] = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        right = iter(j < 4 * scores[update] for j in range(4))  # the first questions right
        return {name: [next(right) for _ in items] for name, items in dev.items()}

    def fake_run_items(model, items, *args, **kwargs):
        return [_fake_solution(it, j % 2 == 1) for j, it in enumerate(items)]

    monkeypatch.undo()  # an earlier call's patches (one test may kill a run, then resume it)
    real_batch = RolloutBatches.batch

    def batch(self, i, rows):
        if i == kill_at:
            raise KeyboardInterrupt
        return real_batch(self, i, rows)

    monkeypatch.setattr(reflective, "dev_results", probe)
    monkeypatch.setattr(reflective, "run_items", fake_run_items)
    monkeypatch.setattr(RolloutBatches, "batch", batch)
    monkeypatch.setattr(reflective.Reflective, "evaluate", lambda self, ctx, *a: {})
    ctx = RunContext(cfg, run, resume=resume, progress=False)
    try:
        out = reflective.Reflective().run(ctx)
    except KeyboardInterrupt:
        out = None
    assert list(probed) == updates  # nothing probed twice across a restart
    return run, out, probed


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phase3_keeps_the_best_window_by_the_probe_across_a_kill(tmp_path, monkeypatch):
    """The probe scores the Phase 2 model 0.25, update 2 0.5 and update 4 0.5: update 2 is
    kept (a tie goes to the earlier model), even when the run is killed after its probe and
    resumed, and the saved model is exactly the one probed after update 2."""
    scores = {0: 0.25, 2: 0.5, 4: 0.5}
    _, out, first = _phase3(tmp_path, monkeypatch, scores, [0, 2], kill_at=3)
    assert out is None
    run, out, second = _phase3(tmp_path, monkeypatch, scores, [4])
    final = _weights(run / "model")
    assert _same(final, first[2])
    assert not _same(final, second[4]) and not _same(final, first[0])  # training moved them
    assert _same(_weights(run / "phase2_model"), first[0])
    probe = out["probe"]
    assert [(r["update"], r["step"], r["accuracy"]) for r in probe["history"]] == [
        (0, 0, 0.25),
        (2, 2, 0.5),
        (4, 4, 0.5),
    ]
    assert all(r["items"] == 4 for r in probe["history"])  # 2 tasks x 2 questions
    assert probe["kept"] == {"update": 2, "step": 2, "accuracy": 0.5}
    assert not probe["kept_phase2_model"] and "update 2 scored 0.500" in probe["why"]
    assert [r["right"] for r in probe["history"]] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    kept = sorted(p.name for p in (run / "reflective/best").iterdir())
    assert kept == ["probe.json", "update_00002.safetensors"]  # the others' weights removed


def test_phase3_returns_the_phase2_model_when_no_window_beats_it(tmp_path, monkeypatch):
    run, out, probed = _phase3(tmp_path, monkeypatch, {0: 0.5, 2: 0.25, 4: 0.5}, [0, 2, 4])
    final = _weights(run / "model")
    assert _same(final, _weights(run / "phase2_model")) and _same(final, probed[0])
    assert not _same(final, probed[4])
    assert out["probe"]["kept_phase2_model"] and out["probe"]["kept"]["update"] == 0
    assert "no window beat the Phase 2 model's 0.500" in out["probe"]["why"]


def test_phase3_keeps_a_window_only_when_its_gain_is_beyond_chance(tmp_path):
    """With ``alpha`` 0.1, on 40 questions: +2 right (2 gained, 0 lost: p = 0.25) does not
    replace the Phase 2 model; +5 (6 gained, 1 lost: p = 0.06) does; a later window must then
    beat *that* model."""
    model = _tiny_model()
    best = reflective.BestByDev(tmp_path, {"t": [None] * 40}, alpha=0.1)
    base = [True] * 10 + [False] * 30
    assert best.record(0, 0, {"t": base}, model, 0.0)  # the first model is the best so far
    plus2 = [True] * 12 + [False] * 28
    assert not best.record(2, 2, {"t": plus2}, model, 0.0)
    assert best.history[-1]["p_vs_best"] == pytest.approx(0.25)
    plus5 = [False] + [True] * 15 + [False] * 24
    assert best.record(4, 4, {"t": plus5}, model, 0.0)
    assert best.history[-1]["p_vs_best"] == pytest.approx(8 / 128)  # P(X >= 6 | 7, 1/2)
    assert not best.record(6, 6, {"t": [True] * 16 + [False] * 24}, model, 0.0)  # +1 on it
    assert best.best["update"] == 4
    summary = best.summary(load_preset("tiny").rl)
    assert summary["kept"]["update"] == 4 and "p = 0.062 <= 0.1" in summary["why"]
    again = reflective.BestByDev(tmp_path, {"t": [None] * 40}, alpha=0.1)  # a resumed run
    assert again.best == best.best and again.history == best.history
    assert again.kept_tasks() == {"t": 15 / 40}  # update 4's development accuracy


def test_robustness_is_measured_on_the_tasks_above_their_constant_on_development_questions():
    """The choice reads development accuracy against each task's best constant answer: a task
    below it, or at it, is left out; with none above, every task is measured."""
    sets = {n: make_source(n).sample(3, 1, 40) for n in ("basic_arithmetic", "spell_backward")}
    const = {n: constant_baseline(make_source(n), v)[1] for n, v in sets.items()}
    assert 0 < const["basic_arithmetic"] < 0.5  # the constant is not zero: "at it" is a case
    above = {"basic_arithmetic": const["basic_arithmetic"] + 0.1, "spell_backward": 0.0}
    assert robustness_tasks(above, const) == ["basic_arithmetic"]
    at = {"basic_arithmetic": const["basic_arithmetic"], "spell_backward": 0.0}
    assert robustness_tasks(at, const) == list(sets)
    assert robustness_tasks({}, const) == list(sets)  # no probe ran


def test_phase3_reuses_phase2s_evaluation_only_when_it_keeps_that_model(tmp_path, monkeypatch):
    ctx = RunContext(load_preset("tiny"), tmp_path, progress=False)
    phase2 = {"tasks": {"t": {"accuracy": 0.5}}, "consistency": {"flagged": 1}}
    ctx.results["phase2"] = {**phase2, "seconds": 3.0}
    calls = []
    fresh = {"tasks": {"t": {"accuracy": 0.25}}, "consistency": {"flagged": 0}}
    monkeypatch.setattr(reflective, "evaluate_tasks", lambda *a: calls.append(a) or fresh)
    assert reflective.final_tasks(ctx, None, {}, kept_phase2=True) == phase2 and not calls
    assert reflective.final_tasks(ctx, None, {}, kept_phase2=False) == fresh and len(calls) == 1
    ctx.results.clear()  # `pdclm train reflective` alone: no Phase 2 evaluation to reuse
    assert reflective.final_tasks(ctx, None, {}, kept_phase2=True) == fresh and len(calls) == 2
