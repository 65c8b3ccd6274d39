"""Episode format round-trips; every generator's gold trace passes its checks, corruption fails."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdclm.data.episodes import (
    Episode,
    EpisodeError,
    format_episode,
    parse_completion,
    parse_episode,
    prompt,
)
from pdclm.data.generators import GENERATORS
from pdclm.vocab import ANSWER, END_THINK, EOS

line = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    question=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    steps=st.lists(line.filter(lambda s: s != ""), max_size=5),
    answer=line,
)
def test_format_then_parse_is_the_identity(question, steps, answer):
    ep = Episode(question, tuple(steps), answer)
    assert parse_episode(format_episode(ep)) == ep


def test_malformed_episodes_are_refused():
    good = format_episode(Episode("q", ("1 + 1 = 2",), "2"))
    with pytest.raises(EpisodeError):
        parse_episode(good[:-1])  # no EOS
    with pytest.raises(EpisodeError):
        parse_episode([s for s in good if s != ANSWER])
    with pytest.raises(EpisodeError):
        Episode("q", ("two\nlines",), "a")


def test_completion_parsing_is_strict():
    text = list(b"1 + 1 = 2\n2 * 3 = 6")
    done = parse_completion([*text, END_THINK, ANSWER, *b"6", EOS])
    assert done == parse_completion([*text, END_THINK, ANSWER, *b"6", EOS, *b"junk"])
    assert done.steps == ("1 + 1 = 2", "2 * 3 = 6") and done.answer == "6" and done.closed_thinking
    assert parse_completion(text).answer is None  # never closed its thinking
    assert parse_completion([*text, END_THINK, *b"6"]).answer is None  # no ANSWER symbol
    assert prompt("q")[-1] == format_episode(Episode("q", (), "a"))[len(prompt("q")) - 1]


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("level", [1, 2, 3])
def test_gold_traces_pass_and_corrupted_ones_fail(name, level):
    gen = GENERATORS[name]
    rng = random.Random(f"{name}-{level}")
    for _ in range(20):
        task = gen.make(rng, level)
        assert gen.score(task, task.answer) == 1.0
        assert gen.score(task, f" {task.answer} ") == 1.0  # surrounding space is not an error
        assert all(gen.check_steps(task, task.steps)), task
        assert parse_episode(format_episode(task.episode())) == task.episode()
        # a wrong answer and a corrupted step are both caught
        wrong = corrupt(task.answer, rng)
        assert gen.score(task, wrong) == 0.0, (task.answer, wrong)
        assert gen.score(task, task.answer + " extra") == 0.0
        i = rng.randrange(len(task.steps))
        bad = [*task.steps[:i], corrupt(task.steps[i], rng), *task.steps[i + 1 :]]
        assert not gen.check_steps(task, bad)[i], (task.steps[i], bad[i])
        assert all(gen.check_steps(task, bad)[:i])


def corrupt(text: str, rng: random.Random) -> str:
    """Change one number (by a nonzero amount) or, without numbers, one move letter."""
    nums = list(re.finditer(r"\d+", text))
    if nums:
        m = nums[-1] if rng.random() < 0.5 else rng.choice(nums)
        return text[: m.start()] + str(int(m[0]) + rng.randint(1, 9)) + text[m.end() :]
    letters = [i for i, ch in enumerate(text) if ch in "UDLRABC"]
    i = rng.choice(letters)
    swap = {"U": "D", "D": "U", "L": "R", "R": "L", "A": "B", "B": "C", "C": "A"}
    return text[:i] + swap[text[i]] + text[i + 1 :]


def test_difficulty_grows_with_level():
    for name, gen in GENERATORS.items():
        lengths = [
            sum(len(gen.make(random.Random(s), lvl).steps) for s in range(20)) for lvl in (1, 3)
        ]
        assert lengths[1] > lengths[0], name


def test_make_is_unchanged():
    """Held-out sets and saved runs depend on ``make`` staying byte-identical for a seed."""
    task = GENERATORS["arithmetic"].make(random.Random(0), 2)
    assert (task.question, task.steps, task.answer) == (
        "Compute 13 * 14 - 2 - 9.",
        ("13 * 14 = 182", "182 - 2 = 180", "180 - 9 = 171"),
        "171",
    )
    task = GENERATORS["bank"].make(random.Random(0), 2)
    assert (task.question, task.steps, task.answer) == (
        "An account starts with 59. Events: fee 1, withdraw 70, fee 4, withdraw 66. A withdrawal "
        "larger than the balance is declined; fees always apply. What is the final balance?",
        ("59 - 1 = 58", "withdraw 70 declined", "58 - 4 = 54", "withdraw 66 declined"),
        "54",
    )
    task = GENERATORS["hanoi"].make(random.Random(0), 1)  # the puzzle as ever, a new wording
    assert (task.question, task.steps, task.answer) == (
        "Tower of Hanoi, disks 1 (smallest) to 3. Pegs: B=2,1 C=- A=3. In the fewest moves, stack "
        "all the disks on peg B: one disk per move, and never a larger disk on a smaller one. "
        "Answer with the moves as source-target pairs, e.g. AC AB.",
        (
            "disk 1 B -> A",
            "disk 2 B -> C",
            "disk 1 A -> C",
            "disk 3 A -> B",
            "disk 1 C -> A",
            "disk 2 C -> B",
            "disk 1 A -> B",
        ),
        "BA BC AC AB CA CB AB",
    )


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_parse_rebuilds_the_task_from_its_question(name):
    gen = GENERATORS[name]
    for level in range(1, 5):
        for seed in range(20):
            task = gen.make(random.Random(seed), level)
            again = gen.parse(task.question)
            assert again == task and again.facts == task.facts, task.question
            assert gen.score(again, task.answer) == 1.0
            assert gen.parse(task.question[:-1]) is None
            assert gen.parse(task.question + " 7") is None
            for other in GENERATORS.values():
                assert other is gen or other.parse(task.question) is None


GRID = "Find a shortest path from S to G; # is a wall. Answer with moves U/D/L/R.\n"
REGISTERS = (
    "Registers start at a=1, b=2, c=3. Run: {}. Answer with the final registers as a=.. b=.. c=.."
)
HANOI = (
    "Tower of Hanoi, disks 1 (smallest) to {}. Pegs: A={} B={} C={}. Move every disk to peg {}, "
    "one at a time, never a larger disk on a smaller one, in the fewest moves. Answer with the "
    "moves as source-target pairs, e.g. AC AB."
)
BANK = (
    "An account starts with {}. Events: {}. A withdrawal larger than the balance is declined; "
    "fees always apply. What is the final balance?"
)


@pytest.mark.parametrize(
    "name, question",
    [
        ("grid_path", GRID + "S#.\n##.\n..G"),  # no path
        ("grid_path", GRID + "S..\n...\n.G"),  # not square
        ("grid_path", GRID + "S.S\n...\n..G"),  # two starts
        ("grid_path", GRID + "S..\n...\n..."),  # no goal
        ("grid_path", GRID + "\n".join(["S" + "." * 12, *["." * 13] * 11, "." * 12 + "G"])),
        ("hanoi", HANOI.format(9, "9,8,7,6,5,4,3,2,1", "-", "-", "C")),  # too many disks
        ("hanoi", HANOI.format(0, "-", "-", "-", "C")),  # no disks
        ("hanoi", HANOI.format(3, "4,1", "2", "-", "C")),  # wrong disk set
        ("hanoi", HANOI.format(3, "1,3", "2", "-", "C")),  # larger disk on a smaller one
        ("hanoi", HANOI.format(3, "3,1", "-", "-", "C")),  # disk 2 missing
        ("hanoi", HANOI.format(3, "3,1", "2", "2", "C")),  # disk 2 twice
        ("hanoi", HANOI.format(3, "3,1", "2", "-", "D")),  # unknown target peg
        ("hanoi", HANOI.format(3, "3,1", "2", "-", "C").replace("C=-", "D=-")),  # unknown peg
        ("hanoi", HANOI.format(3, "3,1", "2", "-", "C").replace("B=2", "A=2")),  # A listed twice
        ("hanoi", HANOI.format(3, "3,1", "2", "", "C")),  # empty peg not written as -
        ("hanoi", HANOI.format(3, "3, 1", "2", "-", "C")),  # not how the generator writes pegs
        ("hanoi", HANOI.format(3, "-", "-", "3,2,1", "C")),  # already solved
        ("hanoi", HANOI.format(3, "3,1", "2", "-", "C") + " Go."),  # trailing junk
        ("arithmetic", "Compute 7."),  # no operation
        ("arithmetic", "Compute 07 + 1."),  # not how the generator writes numbers
        ("arithmetic", "Compute 1234567 + 1."),
        ("arithmetic", "Compute 1" + " + 1" * 13 + "."),
        ("arithmetic", "Compute 1 + x."),
        ("arithmetic", "compute 1 + 2."),
        ("bank", BANK.format(5, "")),
        ("bank", BANK.format(5, "bonus 3")),
        ("bank", BANK.format(-5, "fee 3")),
        ("registers", REGISTERS.format("d = a + b")),
        ("registers", REGISTERS.format("a = a / b")),
        ("registers", REGISTERS.format("")),
    ],
)
def test_parse_refuses_malformed_questions(name, question):
    assert GENERATORS[name].parse(question) is None


def test_parse_infers_the_level_from_the_size():
    assert GENERATORS["arithmetic"].parse("Compute 1" + " * 2" * 12 + ".").level == 11
    assert GENERATORS["arithmetic"].parse("Compute 1 + 2.").level == 1
    assert GENERATORS["grid_path"].parse(GRID + "SG\n..").answer == "R"
    assert GENERATORS["bank"].parse(BANK.format(5, "fee 9")).answer == "-4"
    assert GENERATORS["registers"].parse(REGISTERS.format("c = a * b")).answer == "a=1 b=2 c=2"
    task = GENERATORS["hanoi"].parse(HANOI.format(3, "3,1", "2", "-", "C"))
    assert (task.level, task.answer) == (1, "AB AC BA BC AC")
    assert task.steps[:2] == ("disk 1 A -> B", "disk 3 A -> C")
    assert GENERATORS["hanoi"].parse(HANOI.format(1, "1", "-", "-", "B")).level == 1
    assert GENERATORS["hanoi"].parse(HANOI.format(6, "6,5,4,3,2,1", "-", "-", "C")).level == 4


def test_hanoi_has_many_questions_per_level():
    """Held-out sets are deduplicated against training by question, so a few questions per
    level would leave nothing to train on: 78 puzzles at level 1, each in 4 wordings with the
    pegs listed in any of 6 orders."""
    rng = random.Random(0)
    questions = {GENERATORS["hanoi"].make(rng, 1).question for _ in range(500)}
    assert 400 <= len(questions) <= GENERATORS["hanoi"].space(1) == 78 * 4 * 6


def hanoi_distance(where: tuple[str, ...], target: str) -> int:
    """Fewest moves from ``where`` (disk k on peg ``where[k - 1]``) to every disk on ``target``,
    by breadth-first search over all states: independent of the generator's recursion."""
    goal = (target,) * len(where)
    dist, queue = {where: 0}, [where]
    for state in queue:
        if state == goal:
            return dist[state]
        tops = {p: min((k for k, q in enumerate(state) if q == p), default=None) for p in "ABC"}
        for src, k in tops.items():
            for dst, other in tops.items():
                if k is not None and dst != src and (other is None or other > k):
                    nxt = state[:k] + (dst,) + state[k + 1 :]
                    if nxt not in dist:
                        dist[nxt] = dist[state] + 1
                        queue.append(nxt)
    raise AssertionError("goal unreachable")


def test_hanoi_gold_answer_is_optimal():
    gen, rng = GENERATORS["hanoi"], random.Random(1)
    for i in range(30):
        task = gen.make(rng, 1 + i % 2)
        where = tuple(
            next(p for p, stack in task.facts["pegs"].items() if k in stack)
            for k in range(1, task.facts["disks"] + 1)
        )
        best = hanoi_distance(where, task.facts["target"])
        assert len(task.answer.split()) == len(task.steps) == task.facts["moves"] == best
        assert gen.score(task, task.answer) == 1.0
        moves = task.answer.split()  # a legal but longer route is not the fewest moves
        assert gen.score(task, " ".join([moves[0], moves[0][::-1], *moves])) == 0.0
