"""Human verdicts as the measuring stick: how often the reflection network and each reward
channel agree with held-out human verdicts (Phase 3 reports it; ``pdclm bench human``,
:mod:`pdclm.bench.human`, builds its curves from it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pdclm.cognition.reflection import Reflector
from pdclm.config import Config
from pdclm.data.generators import GENERATORS
from pdclm.data.human import HumanExample
from pdclm.eval.labelling import (
    JUDGING,
    assess,
    from_examples,
)
from pdclm.eval.tasks import eval_budget


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random right episode scores above a random wrong one (ties 1/2)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def rate(flags: Sequence[bool], labels: Sequence[bool]) -> float | None:
    return sum(f == y for f, y in zip(flags, labels, strict=True)) / len(labels) if labels else None


def _correct(ex: HumanExample) -> bool | None:
    """The correctness channel on a human example: the generator's verifier where the question
    parses as one of its tasks, else an exact match with the given gold answer (None without)."""
    task = GENERATORS[ex.task].parse(ex.episode.question) if ex.task in GENERATORS else None
    if task is not None:
        return GENERATORS[ex.task].score(task, ex.answer) >= 1.0
    return ex.answer.strip() == ex.gold.strip() if ex.gold else None


def agreement(critic: Reflector, examples: Sequence[HumanExample], cfg: Config) -> dict[str, Any]:
    """How often the critic (calibrated answer score >= threshold), each reward channel (its
    own judgement >= 1/2) and the channels' automatic verdict agree with the human verdicts,
    beside the best constant verdict; the critic's ranking quality as AUC."""
    if not examples:
        return {"examples": 0}
    y = [ex.verdict for ex in examples]
    t = cfg.rl.reflection.threshold
    assessed = assess(from_examples(examples), critic, eval_budget(cfg.tasks), t)
    right = sum(y) / len(y)
    out: dict[str, Any] = {
        "examples": len(y),
        "questions": len({ex.episode.question for ex in examples}),
        "right_share": right,
        "constant": max(right, 1 - right),
        "critic": rate([a.scores.answer >= t for a in assessed], y),
        "critic_auc": auc([a.scores.answer for a in assessed], y),
        "automatic": rate([a.automatic for a in assessed], y),
    }
    channels = {c: rate([a.channels[c] >= 0.5 for a in assessed], y) for c in (*JUDGING,)}
    known = [(c, v) for ex, v in zip(examples, y, strict=True) if (c := _correct(ex)) is not None]
    channels["correctness"] = rate([c for c, _ in known], [v for _, v in known])
    out["channels"] = channels
    out["correctness_examples"] = len(known)
    return out


# ------------------------------------------------------------------------------------ bench
