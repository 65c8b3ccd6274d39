"""Task sources: reasoning-gym's own scorer, strict credit, held-out never in training,
constant baselines, and a curriculum that follows success."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from pdclm.cognition import ccm
from pdclm.data.generators import GENERATORS
from pdclm.data.tasks import (
    EVAL_SEED,
    GYM_LEVELS,
    GYM_TRACES,
    Curriculum,
    constant_baseline,
    held_out,
    make_source,
    question_space,
    question_spaces,
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


ALWAYS_TRACED = {
    "basic_arithmetic": (1,),
    "chain_sum": (1, 2, 3),
    "spell_backward": (1, 2, 3),
    "word_sequence_reversal": (1, 2, 3),
    "letter_counting": (1, 2, 3),
    "count_bits": (1, 2, 3),
    "simple_equations": (1,),
    "number_sorting": (1, 2, 3),
}
"""Levels at which every item must get gold thinking (others may have parentheses)."""


@pytest.mark.parametrize("name", sorted(GYM_TRACES))
def test_gym_gold_thinking_is_consistent(name):
    src = make_source(name)
    for level in (1, 2, 3):
        for it in src.sample(seed=11, level=level, n=100):
            if name == "basic_arithmetic":  # our levels avoid the package's left-to-right bug
                expression = it.entry[1]["metadata"]["expression"]
                assert eval(expression, {"__builtins__": {}}) == int(it.answer), it.question
            if not it.steps:
                assert level not in ALWAYS_TRACED[name], it.question
                continue
            assert all(s and "\n" not in s for s in it.steps)
            verdict = ccm.check(it.steps, it.answer, question=it.question)
            assert False not in verdict.steps, (it.steps, it.answer)
            if re.fullmatch(r"-?\d+", it.answer):
                assert verdict.answer_follows is True, (it.steps, it.answer)


def test_gym_traces_read_as_intended():
    entry = lambda md, answer: {"metadata": md, "answer": answer}
    assert GYM_TRACES["count_bits"](entry({"number": 160}, "2")) == ("binary 10100000", "ones = 2")
    assert GYM_TRACES["spell_backward"](entry({"word": "roid"}, "dior")) == (
        "letters: r o i d",
        "reversed: d i o r",
    )
    words = {"words": ["hundred", "go", "still"]}
    assert GYM_TRACES["word_sequence_reversal"](entry(words, "still, go, hundred")) == (
        "1 hundred",
        "2 go",
        "3 still",
    )
    assert GYM_TRACES["word_sequence_reversal"](entry(words, "go, still, hundred")) == ()
    counting = {"span": ["Mr", "Smith", "mum"], "target_letter": "m"}
    assert GYM_TRACES["letter_counting"](entry(counting, "4")) == (
        "Mr: 1",
        "Smith: 1",
        "mum: 2",
        "total = 4",
    )
    solve = lambda eq, answer: GYM_TRACES["simple_equations"](
        entry({"equation": eq, "variable": "t"}, answer)
    )
    assert solve("t + 9 = 17", "8") == ("t = 17 - 9 = 8",)
    assert solve("9 - t = 17", "-8") == ("t = 9 - 17 = -8",)
    assert solve("56 - 98*t = -1218", "13") == ("98*t = 56 + 1218 = 1274", "t = 1274 / 98 = 13")
    assert solve("4*t = 12", "3") == ("t = 12 / 4 = 3",)
    assert solve("t*4 = 12", "3") == ("t = 12 / 4 = 3",)
    assert solve("t + t = 4", "2") == solve("t + 2 + 1 = 4", "1") == solve("t + 9 = 17", "7") == ()
    arithmetic = lambda expr, answer: GYM_TRACES["basic_arithmetic"](
        entry({"expression": expr}, answer)
    )
    assert arithmetic("2 + -3*-8", "26") == ("-3 * -8 = 24", "2 + 24 = 26")
    assert arithmetic("9 + 5", "14") == (
        "9 + 5",
        "10 + 4",
        "11 + 3",
        "12 + 2",
        "13 + 1",
        "14 + 0 = 14",
    )
    assert arithmetic("2 - 3", "-1") == ("2 - 3", "1 - 2", "0 - 1", "-1 - 0 = -1")
    assert arithmetic("7 + 0", "7") == ("7 + 0 = 7",)
    assert arithmetic("12 + 7", "19") == ("12 + 7 = 19",)  # beyond COUNT_UP_TO: the sum itself
    assert arithmetic("( 5 - 3 ) - -1", "3") == arithmetic("6 / 2", "3") == ()
    assert arithmetic("1.5 + 1", "2.5") == arithmetic("3 + 2 * 3", "15") == ()


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


def test_held_out_sums_are_counted_with_moves_that_training_shows():
    """The easy level's held-out questions are rows of the single-digit table that training
    never shows; each counting line moves the left operand one way and the right one down,
    and every such move of a held-out trace is in the training traces, unless its answer is
    one that no trained question has."""
    src = make_source("basic_arithmetic")
    evals = held_out(src, level=1, n=48)
    train = training_items(src, 1, 400, seed=5, exclude={it.question for it in evals})

    def moves(steps: tuple[str, ...]) -> set[tuple[str, ...]]:
        lines = [s.split(" = ")[0].split(" ") for s in steps]
        return {(op, a, a2) for (a, op, _), (a2, _, _) in itertools.pairwise(lines)} | {
            ("right", b, b2) for (_, _, b), (_, _, b2) in itertools.pairwise(lines)
        }

    seen = set().union(*(moves(it.steps) for it in train))
    trained_sums = {it.steps[0].split(" = ")[0] for it in train}
    unseen = [it for it in evals if it.steps[0].split(" = ")[0] not in trained_sums]
    assert len(unseen) >= 5  # a table of facts could not answer these
    answers = {it.answer for it in train}  # 10 + 10 alone reaches 20, and 0 - 10 alone -10
    for it in evals:
        assert it.steps[-1].endswith(f" = {it.answer}"), it.steps
        assert moves(it.steps) <= seen or it.answer not in answers, it.steps


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


def test_a_level_counts_only_the_attempts_made_at_it():
    """A probe answers all its questions at the level it started at. When the window fills
    part-way and raises the level, the rest are not evidence about the new level: the raised
    task must read as unknown (the most informative weight), not as solved (the floor)."""
    cur = Curriculum(["t", "u"], {"t": 3, "u": 3}, window=4)
    for _ in range(6):  # 4 raise the level; 2 more answers from the same level-1 probe
        cur.record("t", True, level=1)
    assert cur.level["t"] == 2 and cur.success("t") is None
    assert cur.weights()["t"] == 0.25 == max(cur.weights().values())
    cur.record("t", False, level=2)
    assert cur.success("t") == 0.0


def test_question_space_counts_match_brute_force():
    """Counted spaces equal every question the generator's builder can write (and ``make``
    writes nothing else); sampled spaces find all of a small gym level and bound a large one."""
    arithmetic, hanoi = GENERATORS["arithmetic"], GENERATORS["hanoi"]
    every = {  # level 1: three operands 1..10, two operators
        arithmetic._build([a, b, c], [o, p], 1).question
        for a, b, c in itertools.product(range(1, 11), repeat=3)
        for o, p in itertools.product("+-*", repeat=2)
    }
    space = question_space(make_source("arithmetic"), 1)
    assert space.exact and space.distinct == len(every) == 9000
    rng = random.Random(0)
    assert {arithmetic.make(rng, 1).question for _ in range(2000)} <= every
    every = set()  # level 1: 3 disks anywhere, a target, unsolved; every wording and peg order
    for where in itertools.product("ABC", repeat=3):
        pegs = {p: [k for k in (3, 2, 1) if where[k - 1] == p] for p in "ABC"}
        for target in "ABC":
            if len(pegs[target]) < 3:
                for wording in range(4):
                    for order in map("".join, itertools.permutations("ABC")):
                        every.add(hanoi._build(pegs, target, 1, wording, order).question)
    space = question_space(make_source("hanoi"), 1)
    assert space.exact and space.distinct == len(every) == 78 * 24
    assert {hanoi.make(rng, 1).question for _ in range(2000)} <= every
    # reasoning-gym's easy arithmetic: a ± b, operands 0..10 (basic) and 0..9 (chain_sum)
    for name, text, top in (
        ("basic_arithmetic", "Calculate {} {} {}.", 10),
        ("chain_sum", "State the final answer to the following arithmetic problem: {} {} {} =", 9),
    ):
        every = {text.format(a, o, b) for a in range(top + 1) for b in range(top + 1) for o in "+-"}
        space = question_space(make_source(name), 1, draws=2000)
        assert not space.exact and space.distinct == len(every) == 2 * (top + 1) ** 2
        assert space.estimate is not None and abs(space.size - len(every)) <= 0.02 * len(every)
        assert {it.question for it in make_source(name).sample(0, 1, 2000)} == every
    big = question_space(make_source("letter_counting"), 3, draws=300)
    assert big.lower_bound and big.distinct == 300 and str(big) == ">= 300"


def test_question_spaces_report_the_held_out_share():
    held = held_out(make_source("hanoi"), 1, 30) + held_out(make_source("hanoi"), 2, 5)
    rows = {r["level"]: r for r in question_spaces(["hanoi"], held, draws=100)}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert [rows[k]["held_out"] for k in (1, 2, 3)] == [30, 5, 0]
    assert rows[1]["held_out_share"] == pytest.approx(30 / (78 * 24))
    assert rows[2]["held_out_share"] == pytest.approx(5 / (240 * 24))
