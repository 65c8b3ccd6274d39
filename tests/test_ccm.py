"""CCM: the thinking budget is never exceeded, planted wrong steps are caught, agreement and
source reliance are computed from the model's own likelihoods."""

from __future__ import annotations

import random

import torch

from pdclm.cognition.ccm import (
    Budget,
    Solution,
    agreement,
    answer_logprob,
    check,
    check_equation,
    revise_refuted,
    solve,
    source_reliance,
)
from pdclm.data.episodes import prompt
from pdclm.data.generators import GENERATORS
from pdclm.vocab import ANSWER, END_THINK, EOS, NEWLINE
from tests.test_model import small_model


def fixed_logits_model(preferences: dict[int, float]):
    """A real model whose next-symbol logits are fixed: only the listed symbols are possible."""
    model = small_model()
    head = torch.nn.Linear(model.head.in_features, model.head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        for sym, logit in preferences.items():
            head.bias[sym] = logit
    model.head = head
    return model


def test_budget_is_never_exceeded_and_forces_an_answer():
    model = fixed_logits_model({ord("x"): 2.0, NEWLINE: 0.0})  # thinks forever
    gen = torch.Generator().manual_seed(0)
    questions = ["What is 2 + 2?", "q", "A longer question, so rows run out of step?"]
    for max_steps, max_bytes in [(2, 500), (50, 30), (1, 1)]:
        budget = Budget(max_steps=max_steps, max_bytes=max_bytes, answer_bytes=10)
        for sol in solve(model, questions * 2, budget, temperature=1.0, generator=gen, batch=4):
            assert sol.forced
            assert sol.thinking_bytes <= max_bytes
            assert sol.thinking_bytes == max_bytes or len(sol.steps) >= max_steps
            assert set(sol.answer) <= {"x"} and len(sol.answer) <= 10  # one line, capped
    longer = Budget(2, 30).extended()
    assert longer.max_steps > 2 and longer.max_bytes > 30


def test_a_model_that_closes_its_thinking_is_not_forced():
    model = fixed_logits_model({END_THINK: 0.0})
    (sol,) = solve(model, ["q"], Budget(4, 64))
    assert not sol.forced and sol.thinking_bytes == 0 and sol.answer == ""


def test_batched_solving_equals_one_question_at_a_time():
    model = small_model()
    questions = ["Compute 3 + 4.", "Spell this word backward: cat", "x", "What is 12 * 3 - 5?"]
    budget = Budget(max_steps=3, max_bytes=40, answer_bytes=12)
    together = solve(model, questions, budget, batch=3)
    alone = [solve(model, [q], budget)[0] for q in questions]
    assert together == alone


def test_sampling_only_the_first_steps_then_greedy():
    """``sampled_steps``: past that many new steps a row decodes greedily. Greedy, this model
    writes ``x`` forever; sampled, also ``y`` and line breaks."""
    model = fixed_logits_model({ord("x"): 1.0, ord("y"): 0.5, NEWLINE: 0.5})
    budget = Budget(max_steps=3, max_bytes=60, answer_bytes=4)
    gen = torch.Generator().manual_seed(0)
    (greedy,) = solve(model, ["q"], budget)
    assert greedy.steps == ("x" * 60,)
    assert solve(model, ["q"] * 4, budget, 2.0, generator=gen, sampled_steps=0) == [greedy] * 4
    hot = solve(model, ["q"] * 16, budget, 2.0, generator=gen, sampled_steps=1)
    assert any("y" in h.steps[0] for h in hot)  # the first step is sampled...
    assert all(set("".join(h.steps[1:])) <= {"x"} for h in hot)  # ...the rest is greedy
    assert any(len(h.steps) > 1 for h in hot)
    after = solve(
        model, ["q"] * 16, budget, 2.0, generator=gen, prefixes=["xy\n"] * 16, sampled_steps=1
    )
    assert all(h.steps[0] == "xy" for h in after)  # counted from after the prefix
    assert any("y" in h.steps[1] for h in after if len(h.steps) > 1)


def test_consistency_catches_a_planted_wrong_step():
    steps = ["7 * 3 = 21", "12 + 21 = 33", "33 - 5 = 28"]
    assert check(steps, "28").consistent
    planted = ["7 * 3 = 21", "12 + 21 = 34", "34 - 5 = 29"]
    v = check(planted, "29")
    assert not v.consistent and v.first_error == 1
    assert check(steps, "27").answer_follows is False  # the answer does not follow
    assert check_equation("so the total is 4 + 4 = 8") and check_equation("no math") is None
    assert check_equation("3 - 0 = 3") and check_equation("4 / 0 = 1") is False
    counted = ["9 + 5", "10 + 4", "11 + 3", "12 + 2", "13 + 1", "14 + 0 = 14"]
    assert check(counted, "14").steps == (None, True, True, True, True, True)
    slipped = ["9 + 5", "10 + 4", "12 + 3", "13 + 2", "14 + 1", "15 + 0 = 15"]
    assert check(slipped, "15").first_error == 2  # a miscount is caught where it happens
    assert check(["-3 * -8 = 24", "2 + 24 = 26"], "26").consistent  # equations chain freely
    # the thinking starts from the question's one operation; a miscopied operand is caught
    asked = "Calculate 9 + 5."
    assert check(counted, "14", question=asked).consistent
    assert check(["9 + 4", "10 + 3", "13 + 0 = 13"], "13", question=asked).first_error == 0
    assert check(["9 + 5 = 13"], "13", question=asked).first_error == 0
    assert check(["6 - 10 = -4"], "-4", question="What is 6 - 9?").first_error == 0
    several = "Calculate 12 + 3 - 4."  # two operations: where the thinking starts is unknown
    assert check(["15 - 4 = 11"], "11", question=several).consistent
    rng = random.Random(0)
    for name, gen in GENERATORS.items():  # task-aware checks: moves, states, registers
        task = gen.make(rng, 2)
        assert check(task.steps, task.answer, task).steps == (True,) * len(task.steps), name
        assert check(task.steps, task.answer, task, task.question).consistent, name
        i = len(task.steps) // 2
        broken = list(task.steps)
        broken[i] = (
            broken[i].replace(broken[i][-1], str((int(broken[i][-1]) + 1) % 10))
            if broken[i][-1].isdigit()
            else broken[i][::-1]
        )
        assert check(broken, task.answer, task).first_error == i, (name, broken[i])


def test_agreement_flags_disagreement():
    assert agreement(["4", "4", " 4"]) == {"majority": "4", "agreement": 1.0, "disagree": False}
    a = agreement(["4", "5", "4"])
    assert a["majority"] == "4" and a["disagree"] and abs(a["agreement"] - 2 / 3) < 1e-9


def test_answer_logprob_matches_the_streams_likelihoods():
    model = small_model()
    lp = answer_logprob(model, "Q?", "ab")
    stream = model.start_stream()
    head = [*prompt("Q?"), END_THINK, ANSWER]
    total = 0.0
    logits = None
    for sym in head:
        logits = stream.push_one(sym)
    for sym in [*b"ab", EOS]:
        total += float(torch.log_softmax(logits.float(), -1)[sym])
        logits = stream.push_one(sym)
    assert abs(lp - total) < 1e-3
    r = source_reliance(model, "", "Q?", "ab")
    assert r["context_gain_nats"] == 0.0 and r["context_share"] == 0.5
    r = source_reliance(model, "The answer is ab.", "Q?", "ab")
    assert r["logp_with_context"] != r["logp_without_context"]


def test_checked_decoding_resumes_before_the_refuted_step_and_keeps_what_never_passes(
    monkeypatch,
):
    """A scripted policy counts ``a + b`` out; greedy it slips at its second line, sampled it
    slips only on "hard". The slip is resumed from the longest verified prefix, a consistent
    answer is never touched, and a question that never passes keeps its first answer."""
    import pdclm.cognition.ccm as ccm

    def count(a: int, b: int) -> list[str]:
        return [f"{a + k} + {b - k}" for k in range(b)] + [f"{a + b} + 0 = {a + b}"]

    calls: list[tuple[str, str, float]] = []

    def scripted(
        model, questions, budget, temperature=0.0, generator=None, batch=64, prefixes=None, **_
    ):  # noqa: ANN001, ANN202
        out = []
        for q, pre in zip(questions, prefixes or [""] * len(questions), strict=True):
            calls.append((q, pre, temperature))
            a, b = (int(x) for x in q.replace("hard ", "").split(" + "))
            steps, done = count(a, b), pre.splitlines()
            if temperature == 0.0 and a == 3:  # greedy slip: "4 + 1" then "4 + 0 = 4"
                steps = ["3 + 2", "4 + 1", "4 + 0 = 4"]
            elif q.startswith("hard"):  # one line past the prefix, it miscounts again
                n = len(done) + 1
                steps = count(a, b)[:n] + [f"{a + n - 1} + {b - n}"]
            else:
                assert steps[: len(done)] == done  # resumes exactly after the prefix
            answer = steps[-1].split("= ")[-1]
            out.append(Solution(q, tuple(steps), answer, False, 0))
        return out

    monkeypatch.setattr(ccm, "solve", scripted)
    qs = ["3 + 2", "1 + 1", "hard 2 + 4"]
    first = scripted(None, qs, Budget())
    assert [check(s.steps, s.answer).consistent for s in first] == [False, True, False]
    calls.clear()
    got = revise_refuted(None, qs, first, Budget(), retries=3, samples=2)
    assert got[0].answer == "5" and got[0].steps == ("3 + 2", "4 + 1", "5 + 0 = 5")
    assert got[1] is first[1]  # consistent: untouched and never re-solved
    assert got[2] is first[2]  # never passed: its first answer stands
    assert all(q != "1 + 1" for q, _, _ in calls)
    assert [pre for q, pre, _ in calls if q == "3 + 2"] == ["3 + 2\n4 + 1\n"] * 2  # one try
    hard = [pre.count("\n") for q, pre, t in calls if q.startswith("hard") and t > 0]
    assert hard == [1, 1, 2, 2, 3, 3]  # each try resumes from the longest verified prefix
