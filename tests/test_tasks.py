"""Task sources: reasoning-gym's own scorer, strict credit, held-out never in training,
constant baselines, and a curriculum that follows success."""

from __future__ import annotations

import random

import pytest

from pdclm.data.tasks import (
    EVAL_SEED,
    GYM_LEVELS,
    Curriculum,
    constant_baseline,
    held_out,
    make_source,
    training_items,
)

GYM = sorted(GYM_LEVELS)


@pytest.mark.parametrize("name", GYM)
def test_reasoning_gym_items_are_scored_by_its_own_verifier(name):
    src = make_source(name)
    items = src.sample(seed=3, level=1, n=8)
    assert len({it.question for it in items}) > 1
    for it in items:
        assert src.score(it, it.answer) == 1.0
        assert src.score(it, it.answer + " and more") == 0.0
        assert "Please follow the instruction" not in it.question
        ds, entry = it.entry
        assert ds.score_answer(it.answer, entry) == 1.0  # the package's own scorer agrees


def test_partial_credit_counts_as_wrong():
    src = make_source("basic_arithmetic")
    it = src.sample(seed=0, level=1, n=1)[0]
    ds, entry = it.entry
    assert 0 < ds.score_answer(it.answer + ".0", entry) < 1  # the package pays part
    assert src.score(it, it.answer + ".0") == 0.0  # we do not
    assert src.score(it, f" {it.answer} ") == 1.0  # whitespace around is not an error
    assert src.score(it, str(int(it.answer) + 1)) == 0.0


@pytest.mark.parametrize("name", ["chain_sum", "spell_backward", "arithmetic", "bank"])
def test_no_held_out_question_appears_in_training(name):
    src = make_source(name)
    evals = held_out(src, level=1, n=60)
    assert len({it.question for it in evals}) == len(evals) == 60
    questions = {it.question for it in evals}
    train = training_items(src, level=1, n=300, seed=5, exclude=questions)
    assert len(train) == 300 and not questions & {it.question for it in train}
    # without the exclusion, easy levels would leak (small question spaces)
    if name == "chain_sum":
        raw = src.sample(seed=5, level=1, n=300)
        assert questions & {it.question for it in raw}, "expected overlap without dedupe"
    with pytest.raises(ValueError):
        training_items(src, 1, 5, seed=EVAL_SEED, exclude=set())


def test_constant_baseline_finds_the_frequent_answer():
    src = make_source("letter_counting")
    items = held_out(src, level=1, n=80)
    answer, acc = constant_baseline(src, items)
    assert acc >= max(sum(it.answer == a for it in items) for a in {it.answer for it in items}) / 80
    assert acc > 0.2  # counting a letter in a few words: small numbers dominate


def test_curriculum_raises_lowers_and_prefers_the_learnable():
    cur = Curriculum(["easy", "hard", "mid"], {"easy": 3, "hard": 3, "mid": 3}, window=10)
    for _ in range(10):
        cur.record("easy", True)
    assert cur.level["easy"] == 2
    cur.level["hard"] = 2
    for _ in range(10):
        cur.record("hard", False)
    assert cur.level["hard"] == 1
    for i in range(20):  # easy climbs to its top level and keeps succeeding there
        cur.record("mid", i % 2 == 0)
        cur.record("easy", True)
        cur.record("hard", False)
    w = cur.weights()
    assert cur.level == {"easy": 3, "hard": 1, "mid": 1}
    assert w["mid"] > w["easy"] and w["mid"] > w["hard"]
    picks = [cur.pick(random.Random(i))[0] for i in range(300)]
    assert picks.count("mid") > picks.count("hard")
    clone = Curriculum(["easy", "hard", "mid"], {"easy": 3, "hard": 3, "mid": 3}, window=10)
    clone.load(cur.state())
    assert clone.weights() == w and clone.level == cur.level
