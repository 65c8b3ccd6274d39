"""Self-play for the cognitive loop. Only verified episodes leave this module.

- **Proposer/solver**: the model writes a new question in one of the project's generator
  formats (it is prompted with the format's opening words); the generator's executor parses
  it back into a task with a known answer, or rejects it. The model then solves each accepted
  question several times. A question it solves sometimes but not always is the one worth
  learning from: it is kept with a verified solution of the model's own, and its question
  bytes are trained too, which is how the proposer is rewarded. A question it never solves is
  kept with the executor's gold trace (the question is not rewarded); one it always solves
  is dropped.
- **Multi-agent dialogue**: several copies answer a question, each then reads the others'
  answers and answers again; the majority of the second round is the final answer. If the
  verifier accepts it, the transcript of an agent that reached it with consistent steps is
  kept as an episode whose question carries the other agents' answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pdclm.cognition.ccm import Budget, Solution, agreement, check, solve
from pdclm.data.episodes import Episode, with_context
from pdclm.data.generators import GENERATORS, Task
from pdclm.data.tasks import Item, verify
from pdclm.dist import spread
from pdclm.model.pdclm import PDCLM, complete
from pdclm.vocab import BOS, VOCAB_SIZE

CONTROL = frozenset(range(256, VOCAB_SIZE))
MAX_QUESTION_BYTES = 400


@dataclass(frozen=True)
class Verified:
    """A training episode that passed its verifier, with how it was made."""

    episode: Episode
    task: str
    kind: str
    """``proposal`` (model's question + model's verified solution), ``gold`` (model's
    question + executor's trace) or ``dialogue``."""
    question_weight: float

    def to_json(self) -> dict:
        ep = self.episode
        return {
            "question": ep.question,
            "steps": list(ep.steps),
            "answer": ep.answer,
            "task": self.task,
            "kind": self.kind,
            "question_weight": self.question_weight,
        }

    @staticmethod
    def from_json(d: dict) -> Verified:
        ep = Episode(d["question"], tuple(d["steps"]), d["answer"])
        return Verified(ep, d["task"], d["kind"], d["question_weight"])


def opener(name: str, samples: int = 24) -> str:
    """The words every question of a generator starts with: the proposer's prompt."""
    import random

    rng = random.Random(0)
    questions = [GENERATORS[name].make(rng, 1 + i % 3).question for i in range(samples)]
    prefix = os.path.commonprefix(questions)
    return prefix[: prefix.rfind(" ") + 1] if " " in prefix else prefix


def verified_solution(task: Task, sol: Solution) -> bool:
    """Right answer and every step checked by the generator's own step checker."""
    gen = GENERATORS[task.generator]
    return gen.score(task, sol.answer) >= 1.0 and all(gen.check_steps(task, sol.steps))


def propose_and_solve(
    model: PDCLM,
    names: Sequence[str],
    n: int,
    samples: int,
    budget: Budget,
    temperature: float,
    exclude: set[str],
    generator: torch.Generator,
    batch: int = 128,
) -> tuple[list[Verified], dict]:
    """One proposer/solver round over the given generators; returns kept episodes + stats."""
    openers = [opener(names[i % len(names)]) for i in range(n)]
    kinds = [names[i % len(names)] for i in range(n)]
    prompts = [[BOS, *o.encode()] for o in openers]
    texts = spread(  # ranks propose a share each; all see every proposal
        lambda ps: complete(model, ps, MAX_QUESTION_BYTES, CONTROL, temperature, 0, generator),
        prompts,
    )
    tasks: list[Task] = []
    seen: set[str] = set()
    rejected = {"unparseable": 0, "held_out": 0, "duplicate": 0}
    for name, o, t in zip(kinds, openers, texts, strict=True):
        try:
            question = o + bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            rejected["unparseable"] += 1
            continue
        task = GENERATORS[name].parse(question)
        if task is None:
            rejected["unparseable"] += 1
        elif question in exclude:
            rejected["held_out"] += 1
        elif question in seen:
            rejected["duplicate"] += 1
        else:
            seen.add(question)
            tasks.append(task)
    sols = solve(
        model,
        [t.question for t in tasks for _ in range(samples)],
        budget,
        temperature,
        generator=generator,
        batch=batch,
    )
    kept: list[Verified] = []
    rates = []
    for i, task in enumerate(tasks):
        mine = sols[i * samples : (i + 1) * samples]
        good = [s for s in mine if verified_solution(task, s)]
        rate = sum(GENERATORS[task.generator].score(task, s.answer) for s in mine) / samples
        rates.append(rate)
        if good and rate < 1.0:
            ep = Episode(task.question, good[0].steps, good[0].answer)
            kept.append(Verified(ep, task.generator, "proposal", 1.0))
        elif rate == 0.0:
            kept.append(Verified(task.episode(), task.generator, "gold", 0.0))
    stats = {
        "proposed": n,
        "accepted": len(tasks),
        **{f"rejected_{k}": v for k, v in rejected.items()},
        "mean_solve_rate": sum(rates) / len(rates) if rates else None,
        "kept_proposal": sum(v.kind == "proposal" for v in kept),
        "kept_gold": sum(v.kind == "gold" for v in kept),
        "too_easy": sum(r == 1.0 for r in rates),
    }
    return kept, stats


def peer_context(answers: Sequence[str]) -> str:
    return "Other agents answered: " + "; ".join(a or "(none)" for a in answers) + "."


def dialogue(
    model: PDCLM,
    items: Sequence[Item],
    agents: int,
    budget: Budget,
    temperature: float,
    generator: torch.Generator,
    batch: int = 128,
) -> tuple[list[Verified], dict]:
    """Two rounds of answers by ``agents`` copies; verified transcripts become episodes."""
    questions = [it.question for it in items for _ in range(agents)]
    first = solve(model, questions, budget, temperature, generator=generator, batch=batch)
    contexts = []
    for i in range(len(items)):
        answers = [s.answer for s in first[i * agents : (i + 1) * agents]]
        contexts += [peer_context(answers[:a] + answers[a + 1 :]) for a in range(agents)]
    revised_q = [with_context(c, q) for c, q in zip(contexts, questions, strict=True)]
    second = solve(model, revised_q, budget, temperature, generator=generator, batch=batch)
    kept: list[Verified] = []
    acc1 = acc2 = final_ok = agree1 = agree2 = 0.0
    for i, item in enumerate(items):  # an item may be unanswerable: verify() knows both kinds
        r1 = first[i * agents : (i + 1) * agents]
        r2 = second[i * agents : (i + 1) * agents]
        acc1 += sum(verify(item, s.answer) for s in r1) / agents
        acc2 += sum(verify(item, s.answer) for s in r2) / agents
        agree1 += not agreement([s.answer for s in r1])["disagree"]
        agree2 += not agreement([s.answer for s in r2])["disagree"]
        final = str(agreement([s.answer for s in r2])["majority"])
        if not verify(item, final):
            continue
        final_ok += 1
        for a, s in enumerate(r2):
            if (
                s.answer.strip() == final
                and check(s.steps, s.answer, item.task, s.question).consistent
            ):
                ep = Episode(revised_q[i * agents + a], s.steps, s.answer)
                kept.append(Verified(ep, item.source, "dialogue", 0.0))
                break
    n = max(1, len(items))
    stats = {
        "questions": len(items),
        "agents": agents,
        "accuracy_round1": acc1 / n,
        "accuracy_round2": acc2 / n,
        "accuracy_final": final_ok / n,
        "agreement_round1": agree1 / n,
        "agreement_round2": agree2 / n,
        "kept": len(kept),
    }
    return kept, stats
