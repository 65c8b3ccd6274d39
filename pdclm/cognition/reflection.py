"""The reflection network: a small critic that grades a chain of thought step by step.

It is built like the policy (same PSE: entropy patching, byte + hashed n-gram encoder, latent
transformer over patches, local decoder) with fewer latent layers, starts from the policy's
weights, and replaces the next-byte head by two score heads read at fixed places of an
episode: after each thinking step ("is everything up to here right?") and after the answer
("is the whole episode right?"). It is causal, so a step's score never sees later steps.

It learns from two kinds of labels:

- the policy's own rollouts, judged by the task verifiers (answer) and the CCM's step checks;
- gold traces and *corrupted twins*: one step altered (a number changed, two letters swapped)
  so it learns where a chain goes wrong, or the answer altered under correct steps.

Its scores are the justification reward of Phase 3 and drive :func:`reflect_and_revise`:
solve, score, resample from just before the first doubtful step, keep the best-scored answer.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.cognition.ccm import Budget, Solution, check, solve
from pdclm.config import ReflectionConfig
from pdclm.data.episodes import Episode, Judged, format_episode
from pdclm.data.tasks import Item, verify
from pdclm.io import load_weights
from pdclm.model.pdclm import PDCLM
from pdclm.vocab import END_THINK, EOS, NEWLINE, THINK

IGNORE = -1.0
"""Target of positions that carry no label."""
IDENTITY = torch.tensor([1.0, 0.0])
"""Calibration ``(a, b)`` that leaves scores as trained: ``sigmoid(a * logit + b)``."""
WIDTH_BUCKET = 64
"""Batches are padded to a multiple of this many symbols: every new tensor shape costs the
CPU kernels a slow first call (0.4 s against 0.06 s per critic step when widths vary)."""


class Reflector(nn.Module):
    """A PD-CLM backbone with a step-score head and an answer-score head (logits)."""

    def __init__(self, policy: PDCLM, latent_layers: int) -> None:
        super().__init__()
        cfg = copy.deepcopy(policy.cfg)
        cfg.latent.layers = latent_layers
        self.backbone = PDCLM(policy.pse_cfg, cfg)
        self.backbone.head = nn.Identity()  # scores, not next-symbol logits
        own = self.backbone.state_dict()
        start = {k: v for k, v in policy.state_dict().items() if k in own}
        self.backbone.load_state_dict(start, strict=False)  # the policy's first layers
        self.backbone.freeze_entropy()
        d = policy.pse_cfg.encoder.dim
        self.step_head = nn.Linear(d, 1)
        self.answer_head = nn.Linear(d, 1)
        self.register_buffer("calibration", IDENTITY.clone())
        self.register_load_state_dict_pre_hook(_uncalibrated_if_missing)
        """Platt scaling ``(a, b)`` of the logits fitted on human verdicts (:func:`calibrate`);
        saved with the weights and applied by :func:`score`, not by ``forward`` (training)."""

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Step and answer logits (B, N-1); position j has read ``tokens[:, : j + 1]``."""
        h = self.backbone.features(tokens)
        return self.step_head(h)[..., 0], self.answer_head(h)[..., 0]

    def probability(self, logit: Tensor) -> Tensor:
        """A score head's logit as a calibrated probability."""
        a, b = self.calibration.to(logit.device, torch.float32)
        return (a * logit.float() + b).sigmoid()


def _uncalibrated_if_missing(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
    """Critics saved before calibration existed load as uncalibrated."""
    state.setdefault(prefix + "calibration", IDENTITY.clone())


def score_positions(symbols: Sequence[int]) -> tuple[list[int], int]:
    """Where each step's score and the answer score are read in an episode's symbols: the
    newline (or END_THINK) closing each non-blank thinking line, and the final EOS."""
    think, end = symbols.index(THINK), symbols.index(END_THINK)
    steps, has_text = [], False
    for j in range(think + 1, end + 1):
        s = symbols[j]
        if s in (NEWLINE, END_THINK):
            if has_text:
                steps.append(j)
            has_text = False
        else:
            has_text |= not chr(s).isspace()
    return steps, len(symbols) - 1


def encode(examples: Sequence[Judged]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Padded tokens (B, L+1), step / answer targets (B, L) (``IGNORE`` where unlabelled) and
    each example's loss weight (B,)."""
    rows = [format_episode(j.episode) + [EOS] for j in examples]  # one extra to read EOS
    width = -(-max(map(len, rows)) // WIDTH_BUCKET) * WIDTH_BUCKET
    tokens = torch.full((len(rows), width), EOS, dtype=torch.long)
    step_t = torch.full((len(rows), width - 1), IGNORE)
    answer_t = torch.full((len(rows), width - 1), IGNORE)
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True)):
        tokens[i, : len(row)] = torch.tensor(row)
        steps, answer = score_positions(row[:-1])
        for pos, ok in zip(steps, ex.step_ok, strict=False):
            if ok is not None:
                step_t[i, pos] = float(ok)
        answer_t[i, answer] = float(ex.answer_ok)
    weight = torch.tensor([float(ex.weight) for ex in examples])
    return tokens, step_t, answer_t, weight


def reflection_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
    """Binary cross-entropy of the step and answer heads at their labelled positions, each
    label weighted by its example's weight (a weighted mean)."""
    tokens, step_t, answer_t, weight = batch
    step_logit, answer_logit = model(tokens)
    losses, metrics = [], {}
    for name, logit, target in (("step", step_logit, step_t), ("answer", answer_logit, answer_t)):
        mask = target != IGNORE
        if mask.any():
            w = weight[:, None].expand_as(target)[mask]
            bce = F.binary_cross_entropy_with_logits(
                logit[mask].float(), target[mask], reduction="none"
            )
            loss = (w * bce).sum() / w.sum()
            losses.append(loss)
            metrics[f"{name}_bce"] = float(loss.detach())
    return sum(losses), metrics


# ------------------------------------------------------------------------------------ labels
_NUMBER = re.compile(r"-?\d+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def corrupt_text(text: str, rng: random.Random) -> str | None:
    """``text`` with one number changed or two neighbouring letters of a word swapped
    (None if it has neither or the change would be invisible)."""
    numbers = list(_NUMBER.finditer(text))
    if numbers:
        m = numbers[-1] if rng.random() < 0.7 else rng.choice(numbers)
        value = int(m.group()) + rng.choice([-3, -2, -1, 1, 2, 3, 10])
        return text[: m.start()] + str(value) + text[m.end() :]
    words = [w for w in _WORD.finditer(text) if len(set(w.group())) > 1]
    if not words:
        return None
    w = rng.choice(words)
    s = w.group()
    i = rng.choice([k for k in range(len(s) - 1) if s[k] != s[k + 1]])
    swapped = s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    return text[: w.start()] + swapped + text[w.end() :]


def gold_pair(item: Item, rng: random.Random) -> list[Judged]:
    """A gold trace and its corrupted twin: one wrong step (later steps unlabelled) or, when
    no step can be altered, a wrong answer under right steps."""
    ep = Episode(item.question, item.steps, item.answer)
    out = [Judged(ep, (True,) * len(ep.steps), True)]
    order = list(range(len(ep.steps)))
    rng.shuffle(order)
    if order and rng.random() < 0.75:
        for i in order:
            bad = corrupt_text(ep.steps[i], rng)
            if bad is not None and bad != ep.steps[i]:
                steps = (*ep.steps[:i], bad, *ep.steps[i + 1 :])
                labels = (True,) * i + (False,) + (None,) * (len(steps) - i - 1)
                return [*out, Judged(Episode(ep.question, steps, ep.answer), labels, False)]
    bad = corrupt_text(ep.answer, rng)
    if bad is not None and bad != ep.answer and not verify(item, bad):
        out.append(Judged(Episode(ep.question, ep.steps, bad), (True,) * len(ep.steps), False))
    return out


def judge(item: Item, sol: Solution) -> Judged:
    """A rollout labelled by the task's verifier and the CCM's step checks."""
    verdict = check(sol.steps, sol.answer, item.task, sol.question)
    right = verify(item, sol.answer) and verdict.consistent
    return Judged(Episode(item.question, sol.steps, sol.answer), verdict.steps, right)


# ----------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Scores:
    steps: tuple[float, ...]
    """Probability that the chain is right up to and including each step."""
    answer: float
    """Probability that the whole episode is right."""

    @property
    def first_doubt(self) -> int | None:
        return next((i for i, p in enumerate(self.steps) if p < 0.5), None)


@torch.no_grad()
def logits(reflector: Reflector, episodes: Sequence[Episode], batch: int = 64) -> list[Tensor]:
    """Per episode, the raw (uncalibrated) logits: one per step, then the answer's."""
    reflector.eval()
    out: list[Tensor] = []
    for lo in range(0, len(episodes), batch):
        chunk = [Judged(ep, (), False) for ep in episodes[lo : lo + batch]]
        tokens = encode(chunk)[0]
        step_logit, answer_logit = reflector(tokens.to(reflector.step_head.weight.device))
        step_logit, answer_logit = step_logit.float().cpu(), answer_logit.float().cpu()
        for i, j in enumerate(chunk):
            steps, answer = score_positions(format_episode(j.episode))
            out.append(torch.cat([step_logit[i, steps], answer_logit[i, answer : answer + 1]]))
    return out


def score(reflector: Reflector, episodes: Sequence[Episode], batch: int = 64) -> list[Scores]:
    """Calibrated probabilities: each step right so far, and the whole episode right."""
    out = []
    for z in logits(reflector, episodes, batch):
        p = reflector.probability(z)
        out.append(Scores(tuple(p[:-1].tolist()), float(p[-1])))
    return out


def calibrate(reflector: Reflector, examples: Sequence[Judged]) -> dict:
    """Fit Platt scaling ``sigmoid(a * logit + b)`` of the answer score to ``examples``'
    verdicts (human ones: examples the critic was not trained on), pulled towards the identity
    by one pseudo-example's worth of penalty so a handful of verdicts cannot swing it far.
    Sets ``reflector.calibration``; returns the fit."""
    if not examples:
        reflector.calibration.copy_(IDENTITY)
        return {"examples": 0, "a": 1.0, "b": 0.0}
    z = torch.stack([row[-1] for row in logits(reflector, [j.episode for j in examples])])
    y = torch.tensor([float(j.answer_ok) for j in examples])
    ab = IDENTITY.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> Tensor:
        return F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll() + ((ab - IDENTITY) ** 2).sum() / len(y)
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(F.binary_cross_entropy_with_logits(z, y))
    opt.step(closure)
    with torch.no_grad():
        reflector.calibration.copy_(ab.detach())
        after = float(nll())
    a, b = ab.detach().tolist()
    return {"examples": len(y), "a": a, "b": b, "bce_before": before, "bce_after": after}


def solution_episode(question: str, sol: Solution) -> Episode:
    return Episode(question, sol.steps, sol.answer)


# ---------------------------------------------------------------------------- self-debugging
@dataclass(frozen=True)
class Attempt:
    solution: Solution
    scores: Scores
    prefix_steps: int
    """Steps kept from the previous best attempt (the revision resumed after them)."""


def _judge(sol: Solution, sc: Scores) -> tuple[float, int | None]:
    """The reflector's score of an attempt, or -1 where the CCM refutes its own steps, and the
    first refuted step (None where the check passes or cannot tell)."""
    verdict = check(sol.steps, sol.answer, question=sol.question)
    return (sc.answer if verdict.consistent else -1.0), verdict.first_error


@torch.no_grad()
def reflect_and_revise(
    policy: PDCLM,
    reflector: Reflector,
    questions: Sequence[str],
    budget: Budget,
    cfg: ReflectionConfig,
    generator: torch.Generator | None = None,
    batch: int = 64,
) -> list[list[Attempt]]:
    """Solve greedily; while the best answer scores below ``cfg.threshold`` or its steps fail
    the CCM's check (at most ``cfg.rounds`` times), keep its steps before the first refuted
    one (else before the reflector's first doubtful one) and sample ``cfg.samples``
    continuations from there, each within the CCM budget. Per question: the attempts in
    order, the chosen one last.

    A revision replaces the answer only when its steps pass the check and the reflector
    scores it at least ``cfg.threshold`` and above the answer it replaces. Taking any
    higher-scored sample let the reflector's mistakes through: on a make-run model, 61 right
    answers of 288 became wrong and 4 wrong ones right (docs/reflection.md)."""
    first = solve(policy, questions, budget, batch=batch)
    first_scores = score(
        reflector, [solution_episode(q, s) for q, s in zip(questions, first, strict=True)]
    )
    history = [[Attempt(s, sc, 0)] for s, sc in zip(first, first_scores, strict=True)]
    best = [h[0] for h in history]
    judged = [_judge(s, sc) for s, sc in zip(first, first_scores, strict=True)]
    trust, refuted = [t for t, _ in judged], [r for _, r in judged]
    for _ in range(cfg.rounds):
        todo = [i for i in range(len(best)) if trust[i] < cfg.threshold]
        if not todo:
            break
        qs, prefixes, kept = [], [], []
        for i in todo:
            b = best[i]
            doubt = refuted[i]  # the check's refuted step is the sharper cut ...
            doubt = b.scores.first_doubt if doubt is None else doubt  # ... than the doubt
            keep = len(b.solution.steps) if doubt is None else doubt
            for _ in range(cfg.samples):
                qs.append(questions[i])
                prefixes.append("".join(s + "\n" for s in b.solution.steps[:keep]))
                kept.append(keep)
        sols = solve(policy, qs, budget, 0.7, generator=generator, batch=batch, prefixes=prefixes)
        scores = score(reflector, [solution_episode(q, s) for q, s in zip(qs, sols, strict=True)])
        judged = [_judge(s, sc) for s, sc in zip(sols, scores, strict=True)]
        for k, i in enumerate(todo):
            span = range(k * cfg.samples, (k + 1) * cfg.samples)
            top = max(span, key=lambda j: judged[j][0])
            attempt = Attempt(sols[top], scores[top], kept[top])
            history[i].append(attempt)
            if judged[top][0] >= cfg.threshold and judged[top][0] > trust[i]:
                best[i], (trust[i], refuted[i]) = attempt, judged[top]
    for h, b in zip(history, best, strict=True):
        if h[-1] is not b:
            h.append(b)  # the chosen attempt closes the list
    return history


CRITIC_FILE = "reflector.safetensors"
"""Saved beside a model's weights once Phase 3 has trained it."""


def load_reflector(policy: PDCLM, latent_layers: int, model_dir: Path) -> Reflector:
    path = model_dir / CRITIC_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{model_dir} has no reflection network ({CRITIC_FILE}); it is trained by Phase 3 "
            "(`pdclm run` or `pdclm train reflective`)"
        )
    critic = Reflector(policy, latent_layers)
    load_weights(critic, path)
    return critic.eval()
