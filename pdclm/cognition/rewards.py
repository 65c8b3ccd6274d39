"""The Multi-Reward RL layer: five reward channels, each a plain function over a batch of
rollouts, and their combination into group-relative advantages.

Channels (each in [0, 1] per rollout):

- **correctness**: the task's own verifier accepts the answer;
- **consistency**: the CCM's view: share of checkable steps verified, whether the answer
  follows from the last derived value, and agreement with the other samples of its group;
- **justification**: the reflection network's mean step score;
- **efficiency**: the share of the thinking budget left unused (0 when the budget ran out);
- **hallucination**: 1 minus the share of numbers in the thinking that are made up: new (in
  neither the question nor an earlier step) in a step the CCM refuted; on a question that
  cannot be answered from what it gives, 1 for saying so and 0 for any other answer.

Every channel but correctness pays only when the answer is correct (:func:`gate`): a format
or length reward that pays on wrong answers can rise while accuracy falls. ``gated=False``
gives a channel's own judgement, which is what labels episodes no verifier can check
(:mod:`pdclm.eval.labelling`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pdclm.cognition.ccm import Budget, Solution, Verdict
from pdclm.config import RewardsConfig
from pdclm.data.tasks import UNANSWERABLE, Item

CHANNELS = ("correctness", "consistency", "justification", "efficiency", "hallucination")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Rollout:
    """One sampled solution with everything the channels judge it by."""

    item: Item
    solution: Solution
    correct: bool
    verdict: Verdict
    group: int
    """Rollouts of the same question share a group (advantages are relative within it)."""
    budget: Budget
    step_scores: tuple[float, ...] = ()
    """The reflection network's probability that each step is right."""

    @property
    def answerable(self) -> bool:
        return self.item.answer != UNANSWERABLE


def gate(values: list[float], rollouts: Sequence[Rollout]) -> list[float]:
    """Auxiliary channels pay only on correct answers."""
    return [v if r.correct else 0.0 for v, r in zip(values, rollouts, strict=True)]


def correctness(rollouts: Sequence[Rollout]) -> list[float]:
    return [float(r.correct) for r in rollouts]


def group_agreement(rollouts: Sequence[Rollout]) -> list[float]:
    """Per rollout, the share of its group that gave the same answer."""
    answers: dict[int, Counter[str]] = {}
    for r in rollouts:
        answers.setdefault(r.group, Counter())[r.solution.answer.strip()] += 1
    return [
        answers[r.group][r.solution.answer.strip()] / sum(answers[r.group].values())
        for r in rollouts
    ]


def consistency(rollouts: Sequence[Rollout], gated: bool = True) -> list[float]:
    """Mean of: verified share of the checkable steps, answer follows from the last derived
    value, and the share of the group that gave the same answer (unknowns count 1/2)."""
    out = []
    for r, agree in zip(rollouts, group_agreement(rollouts), strict=True):
        checked = [ok for ok in r.verdict.steps if ok is not None]
        steps = sum(checked) / len(checked) if checked else 0.5
        follows = {True: 1.0, None: 0.5, False: 0.0}[r.verdict.answer_follows]
        out.append((steps + follows + agree) / 3)
    return gate(out, rollouts) if gated else out


def justification(rollouts: Sequence[Rollout], gated: bool = True) -> list[float]:
    """The reflection network's mean step score (1/2 when it saw no steps)."""
    out = [sum(r.step_scores) / len(r.step_scores) if r.step_scores else 0.5 for r in rollouts]
    return gate(out, rollouts) if gated else out


def efficiency(rollouts: Sequence[Rollout], gated: bool = True) -> list[float]:
    out = []
    for r in rollouts:
        room = max(1, r.budget.max_bytes)
        out.append(0.0 if r.solution.forced else max(0.0, 1 - r.solution.thinking_bytes / room))
    return gate(out, rollouts) if gated else out


def ungrounded(question: str, steps: Sequence[str], verdict: Verdict) -> tuple[int, int]:
    """(numbers in the thinking that appear from nowhere, numbers in the thinking). A new
    number (in neither the question nor an earlier step) is made up when the CCM refuted its
    step; in a verified step it was derived, and a step the CCM cannot check is given the
    benefit of the doubt. A refuted step that only reuses known numbers is inconsistent
    (the consistency channel's business) but invents nothing."""
    known = set(_NUMBER.findall(question))
    bad = total = 0
    for i, step in enumerate(steps):
        found = _NUMBER.findall(step)
        refuted = i < len(verdict.steps) and verdict.steps[i] is False
        total += len(found)
        if refuted:
            bad += sum(n not in known for n in found)
        known.update(found)
    return bad, total


def hallucination(rollouts: Sequence[Rollout], gated: bool = True) -> list[float]:
    out = []
    for r in rollouts:
        if not r.answerable:
            out.append(float(r.solution.answer.strip().lower() == UNANSWERABLE))
            continue
        bad, total = ungrounded(r.item.question, r.solution.steps, r.verdict)
        out.append(1.0 - bad / total if total else 1.0)
    return gate(out, rollouts) if gated else out


CHANNEL_FNS: dict[str, Callable[[Sequence[Rollout]], list[float]]] = {
    "correctness": correctness,
    "consistency": consistency,
    "justification": justification,
    "efficiency": efficiency,
    "hallucination": hallucination,
}


def score_channels(rollouts: Sequence[Rollout]) -> dict[str, Tensor]:
    """Every channel's rewards, (N,) each."""
    return {c: torch.tensor(CHANNEL_FNS[c](rollouts), dtype=torch.float32) for c in CHANNELS}


def group_normalise(x: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - group mean) / group std; 0 for every member of a group whose values are all equal."""
    out = torch.zeros_like(x)
    for g in groups.unique():
        idx = groups == g
        v = x[idx]
        std = v.std(unbiased=False)
        out[idx] = 0.0 if std < eps else (v - v.mean()) / (std + eps)
    return out


def advantages(channels: dict[str, Tensor], groups: Tensor, cfg: RewardsConfig) -> Tensor:
    """Group-relative advantages (zero-mean in every group) from the weighted channels."""
    weights = {c: getattr(cfg, c) for c in CHANNELS if getattr(cfg, c) > 0}
    if cfg.aggregate == "channel":
        return sum(w * group_normalise(channels[c], groups) for c, w in weights.items())
    total = sum(w * channels[c] for c, w in weights.items())
    return group_normalise(total, groups)
