"""The labelling loop (``pdclm label``): ask a person for verdicts where they are worth most.

Episodes come from a run's Phase 3 rollouts (or are sampled fresh from its model). Each is
assessed by the reflection network (calibrated answer score, step scores) and by the reward
channels' own judgement (ungated: :mod:`pdclm.cognition.rewards`). An episode is worth a
person's time when the critic is unsure (score near 1/2) or the channels disagree with each
other and with the critic; the loop shows the most valuable first, one at a time, and appends
each verdict to a JSONL file (:mod:`pdclm.data.human`) the moment it is given, atomically, so
an interrupted session loses nothing and a restarted one skips what is already labelled.

The reward channels also give an *automatic verdict* without any person or gold answer: the
CCM refutes no step and the answer does not contradict the last derived value, no number is
made up, and at least half the episode's group (samples of the same question) agree on the
answer. ``--from-verifier`` fills verdicts from the task verifiers and the CCM's step checks
instead of a person, so the loop is testable and benchmarkable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from pdclm.cognition.ccm import Budget, Solution, check
from pdclm.cognition.reflection import Reflector, Scores, judge, load_reflector, score
from pdclm.cognition.rewards import (
    Rollout,
    consistency,
    efficiency,
    group_agreement,
    hallucination,
    justification,
)
from pdclm.config import Config
from pdclm.data.episodes import Episode, Judged
from pdclm.data.generators import GENERATORS
from pdclm.data.human import HumanExample, episode_key, read_examples
from pdclm.data.tasks import UNANSWERABLE, Item, make_source, training_items
from pdclm.eval.tasks import autocast_context, eval_budget, held_out_sets, run_items
from pdclm.io import append_jsonl_atomic
from pdclm.model.io import find_model_dir, load_model
from pdclm.model.pdclm import PDCLM

JUDGING = ("consistency", "hallucination", "justification")
"""The channels whose own verdict (>= 1/2) says whether an episode is right."""


@dataclass(frozen=True)
class Candidate:
    """An episode that could be labelled, with what is known about it."""

    item: Item
    """Question (as the model saw it) and task; its answer is the gold one where known, ``""``
    where not, :data:`UNANSWERABLE` for a question made unanswerable on purpose."""
    solution: Solution
    group: int
    """Samples of the same question share a group."""
    verified: bool | None
    """The task verifier's and the CCM's verdict (right answer, no refuted step) if known."""
    source: str

    @property
    def episode(self) -> Episode:
        return Episode(self.item.question, self.solution.steps, self.solution.answer)

    @property
    def key(self) -> str:
        return episode_key(self.item.question, self.solution.steps, self.solution.answer)


def _solution(question: str, steps: Sequence[str], answer: str) -> Solution:
    return Solution(question, tuple(steps), answer, False, len("\n".join(steps).encode()))


def _item(task: str, question: str, gold: str) -> Item:
    """An item for the channels: the generator's parsed task (for its step checks) if any."""
    parsed = GENERATORS[task].parse(question) if task in GENERATORS else None
    return Item(task, 1, question, gold, (), parsed)


def from_run(run_dir: Path) -> list[Candidate]:
    """Every rollout of a run's Phase 3 (``reflective/rollouts/*.jsonl``), with the verdict
    recorded when it was made; a group is a question within one update."""
    files = sorted((run_dir / "reflective" / "rollouts").glob("batch_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{run_dir} has no Phase 3 rollouts (reflective/rollouts/)")
    out: list[Candidate] = []
    groups: dict[tuple[str, str], int] = {}
    for f in files:
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            d = json.loads(line)
            gold = "" if d["answerable"] else UNANSWERABLE
            g = groups.setdefault((f.name, d["question"]), len(groups))
            out.append(
                Candidate(
                    _item(d["task"], d["question"], gold),
                    _solution(d["question"], d["steps"], d["answer"]),
                    g,
                    bool(d["answer_ok"]),
                    f"{f}:{lineno}",
                )
            )
    return out


def from_examples(examples: Sequence[HumanExample]) -> list[Candidate]:
    """Human examples as candidates (for the channels' view of them); verdicts on the same
    question form a group."""
    groups: dict[str, int] = {}
    out = []
    for ex in examples:
        ep = ex.episode
        g = groups.setdefault(ep.question, len(groups))
        item = _item(ex.task, ep.question, ex.gold)
        out.append(Candidate(item, _solution(ep.question, ep.steps, ep.answer), g, None, "human"))
    return out


def fresh(policy: PDCLM, cfg: Config, exclude: set[str], seed: int) -> list[Candidate]:
    """``human.questions`` training questions (spread over the tasks, none held out), each
    answered ``human.samples`` times at temperature 1 and judged by the verifiers and CCM."""
    names = list(cfg.tasks.names)
    per = -(-cfg.human.questions // len(names))
    items = [
        it
        for name in names
        for it in training_items(make_source(name), cfg.tasks.eval_level, per, 5000 + seed, exclude)
    ]
    random.Random(seed).shuffle(items)
    items = items[: cfg.human.questions]
    flat = [it for it in items for _ in range(cfg.human.samples)]
    gen = torch.Generator().manual_seed(seed)
    budget = eval_budget(cfg.tasks)
    sols = run_items(policy, flat, budget, cfg.tasks.batch, 1.0, gen)
    return [
        Candidate(it, s, j // cfg.human.samples, judge(it, s).answer_ok, f"fresh:{seed}")
        for j, (it, s) in enumerate(zip(flat, sols, strict=True))
    ]


# --------------------------------------------------------------------------------- assessing
@dataclass(frozen=True)
class Assessed:
    candidate: Candidate
    scores: Scores
    """The reflection network's (calibrated) step and answer scores."""
    channels: dict[str, float]
    """Each reward channel's own (ungated) judgement in [0, 1]."""
    steps_checked: tuple[bool | None, ...]
    """The CCM's step checks."""
    automatic: bool
    """The reward channels' verdict (see the module docstring)."""
    uncertainty: float
    """1 when the critic's answer score is 1/2, 0 when it is 0 or 1."""
    disagreement: float
    """1 when the judging channels and the critic split evenly, 0 when they all agree."""

    @property
    def worth(self) -> float:
        return max(self.uncertainty, self.disagreement)

    def automatic_label(self, weight: float = 1.0) -> Judged:
        """The channels' labels as a training example: the CCM's step checks and the
        automatic verdict."""
        return Judged(self.candidate.episode, self.steps_checked, self.automatic, weight)


def assess(
    candidates: Sequence[Candidate], critic: Reflector, budget: Budget, threshold: float = 0.5
) -> list[Assessed]:
    scores = score(critic, [c.episode for c in candidates])
    rollouts = [
        Rollout(
            c.item,
            c.solution,
            bool(c.verified),
            check(c.solution.steps, c.solution.answer, c.item.task, c.solution.question),
            c.group,
            budget,
            s.steps,
        )
        for c, s in zip(candidates, scores, strict=True)
    ]
    values = {
        "consistency": consistency(rollouts, gated=False),
        "hallucination": hallucination(rollouts, gated=False),
        "justification": justification(rollouts, gated=False),
        "efficiency": efficiency(rollouts, gated=False),
    }
    agree = group_agreement(rollouts)
    out = []
    for i, (c, s, r) in enumerate(zip(candidates, scores, rollouts, strict=True)):
        ch = {name: v[i] for name, v in values.items()}
        votes = [ch[name] >= 0.5 for name in JUDGING] + [s.answer >= threshold]
        yes = sum(votes) / len(votes)
        automatic = r.verdict.consistent and ch["hallucination"] >= 1.0 and agree[i] >= 0.5
        out.append(
            Assessed(
                c,
                s,
                ch,
                r.verdict.steps,
                automatic,
                1 - abs(2 * s.answer - 1),
                1 - abs(2 * yes - 1),
            )
        )
    return out


def rank(assessed: Sequence[Assessed], done: Collection[str] = ()) -> list[Assessed]:
    """Most worth labelling first (ties: the critic's uncertainty); episodes already labelled
    (keys in ``done``) and repeats of an episode are left out."""
    seen = set(done)
    out = []
    for a in sorted(assessed, key=lambda a: (-a.worth, -a.uncertainty)):
        if a.candidate.key not in seen:
            seen.add(a.candidate.key)
            out.append(a)
    return out


# ---------------------------------------------------------------------------------- the loop
def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def verifier_example(a: Assessed, annotator: str = "verifier") -> HumanExample:
    """The verdict the task verifier and the CCM give (``--from-verifier``)."""
    c = a.candidate
    if c.verified is None:
        raise ValueError(f"no verifier verdict for {c.source}")
    # "right" implies every step right; "wrong" names the steps the CCM refuted, if any
    steps = a.steps_checked if not c.verified and False in a.steps_checked else None
    return HumanExample(
        c.item.question,
        c.solution.steps,
        c.solution.answer,
        c.verified,
        annotator,
        now(),
        step_verdicts=steps,
        reason="task verifier and CCM step checks",
        task=c.item.source,
        gold=c.item.answer,
        source=c.source,
    )


def show(a: Assessed, index: int, total: int) -> str:
    """The terminal view of one episode."""
    c, s = a.candidate, a.scores
    marks = {True: "ok", False: "WRONG", None: ""}
    lines = [
        "",
        f"=== {index}/{total}  task {c.item.source}  worth {a.worth:.2f} "
        f"(critic unsure {a.uncertainty:.2f}, channels disagree {a.disagreement:.2f})",
        f"question: {c.item.question}",
        "thinking (critic's score, CCM check):",
    ]
    for i, step in enumerate(c.solution.steps):
        p = s.steps[i] if i < len(s.steps) else float("nan")
        ccm = marks[a.steps_checked[i]] if i < len(a.steps_checked) else ""
        lines.append(f"  {i + 1:>2}. [{p:.2f}] {ccm:>5}  {step}")
    lines.append(f"answer: {c.solution.answer!r}   critic: {s.answer:.2f}")
    lines.append("channels: " + "  ".join(f"{k} {v:.2f}" for k, v in a.channels.items()))
    return "\n".join(lines)


def ask_person(a: Assessed, ask: Callable[[str], str], annotator: str) -> HumanExample | str:
    """One verdict from a person, or ``"skip"`` / ``"quit"``."""
    while True:
        key = ask("verdict? [r]ight [w]rong [s]kip [q]uit: ").strip().lower()[:1]
        if key in ("s", "q"):
            return {"s": "skip", "q": "quit"}[key]
        if key in ("r", "w"):
            break
    n = len(a.candidate.solution.steps)
    steps: tuple[bool | None, ...] | None = None
    if key == "w" and n:
        while True:
            marked = ask(f"wrong steps (numbers 1-{n}, blank: not marked): ").split()
            if all(m.isdigit() and 1 <= int(m) <= n for m in marked):
                break
        if marked:
            wrong = {int(m) - 1 for m in marked}
            steps = tuple(False if i in wrong else None for i in range(n))
    reason = ask("reason (optional): ").strip()
    c = a.candidate
    return HumanExample(
        c.item.question,
        c.solution.steps,
        c.solution.answer,
        key == "r",
        annotator,
        now(),
        step_verdicts=steps,
        reason=reason,
        task=c.item.source,
        gold=c.item.answer if c.item.answer else "",
        source=c.source,
    )


def labelled_keys(path: Path) -> set[str]:
    """Episodes that already have a verdict in ``path``."""
    return {ex.key for ex in read_examples(path)} if path.exists() else set()


def label(
    assessed: Sequence[Assessed],
    path: Path,
    annotator: str,
    limit: int | None = None,
    from_verifier: bool = False,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Show the most valuable unlabelled episodes one at a time and append each verdict to
    ``path`` as soon as it is given; stops after ``limit`` verdicts, at ``q``, at the end of
    input or at an interrupt (every verdict given so far is on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = labelled_keys(path)
    queue = rank(assessed, done)
    todo = queue[:limit] if limit is not None else queue
    stats = {"already": len(done), "offered": 0, "labelled": 0, "skipped": 0, "right": 0}
    try:
        for i, a in enumerate(todo, 1):
            stats["offered"] += 1
            if from_verifier:
                verdict: HumanExample | str = verifier_example(a, annotator)
            else:
                say(show(a, i, len(todo)))
                verdict = ask_person(a, ask, annotator)
            if verdict == "quit":
                break
            if verdict == "skip":
                stats["skipped"] += 1
                continue
            append_jsonl_atomic(path, verdict.to_json())
            stats["labelled"] += 1
            stats["right"] += verdict.verdict
    except (KeyboardInterrupt, EOFError):
        say(f"\nstopped; {stats['labelled']} verdicts of this session are in {path}")
    stats["left"] = len(queue) - stats["offered"]
    return stats


def candidates_for(
    run_dir: Path, policy: PDCLM, cfg: Config, exclude: set[str], seed: int, fresh_only: bool
) -> list[Candidate]:
    """A run's Phase 3 rollouts, or fresh samples when it has none (or ``fresh_only``)."""
    if not fresh_only and (run_dir / "reflective" / "rollouts").is_dir():
        return from_run(run_dir)
    return fresh(policy, cfg, exclude, seed)


def label_command(
    cfg: Config,
    ckpt: str | None,
    file: str | None,
    annotator: str,
    limit: int | None,
    from_verifier: bool,
    fresh_only: bool,
    seed: int,
) -> dict[str, Any]:
    """``pdclm label``: load a run's model and reflection network, gather its episodes, and
    run the loop (verdicts into ``file``, default ``RUN/human_verdicts.jsonl``)."""
    model_dir = find_model_dir(ckpt)
    policy, saved = load_model(model_dir)
    policy.eval()
    critic = load_reflector(policy, saved.rl.reflection.latent_layers, model_dir)
    exclude = {it.question for items in held_out_sets(cfg.tasks).values() for it in items}
    candidates = candidates_for(model_dir.parent, policy, cfg, exclude, seed, fresh_only)
    with autocast_context(cfg.train.bf16):
        assessed = assess(candidates, critic, eval_budget(cfg.tasks), cfg.rl.reflection.threshold)
    path = Path(file) if file else model_dir.parent / "human_verdicts.jsonl"
    stats = label(assessed, path, annotator, limit, from_verifier)
    print(
        f"{stats['labelled']} new verdicts ({stats['right']} right), {stats['skipped']} skipped, "
        f"{stats['already']} labelled before, {stats['left']} episodes left -> {path}\n"
        f"use them: pdclm prepare --data.sources ... human:{path}"
    )
    return {**stats, "file": str(path), "episodes": len(candidates)}
