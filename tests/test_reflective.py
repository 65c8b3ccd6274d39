"""Phase 3: reward channels, group-relative advantages, the clipped objective, the reflection
network, robustness perturbations and the unanswerable-question transform."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

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
from pdclm.data.episodes import Episode, format_episode
from pdclm.data.generators import GENERATORS
from pdclm.data.tasks import UNANSWERABLE, Item, make_source, training_items, unanswerable, verify
from pdclm.eval.robustness import perturb, template_words
from pdclm.model.pdclm import PDCLM
from pdclm.train.critic import train_reflector
from pdclm.train.grpo import action_logprobs, clipped_objective, grpo_loss_fn, rollout_tensors
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
