"""The Cognitive Control Module: keeps a chain of thought in check.

- **Depth limit** (:func:`solve`): a budget on thinking steps and bytes. When it runs out the
  thinking is closed for the model (END_THINK, ANSWER are pushed into its stream) and the
  answer is forced; :meth:`Budget.extended` gives more room ("keep thinking").
- **Consistency** (:func:`check`): re-checks every derived step it can (arithmetic equalities
  generically; state updates and move legality through a task generator's own checker) and
  whether the answer equals the last derived value; :func:`agreement` flags disagreement
  across several samples.
- **Source separation** (:func:`source_reliance`): how much an answer depends on the given
  context versus what the model already knew: the answer's log-likelihood with the context
  minus without it.
"""

from __future__ import annotations

import operator
import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from pdclm.data.episodes import prompt, split_steps, with_context
from pdclm.data.generators import GENERATORS, Task
from pdclm.dist import spread
from pdclm.model.pdclm import PDCLM, sample_next
from pdclm.vocab import ANSWER, END_THINK, EOS, NEWLINE


@dataclass(frozen=True)
class Budget:
    max_steps: int = 8
    max_bytes: int = 256
    answer_bytes: int = 64

    def extended(self, steps: int = 4, bytes_: int = 128) -> Budget:
        """More room to think (the "keep thinking" control)."""
        return replace(self, max_steps=self.max_steps + steps, max_bytes=self.max_bytes + bytes_)


@dataclass(frozen=True)
class Solution:
    question: str
    steps: tuple[str, ...]
    answer: str
    forced: bool
    """True when the budget, not the model, closed the thinking."""
    thinking_bytes: int
    symbols: tuple[int, ...] = field(default=(), compare=False, repr=False)
    """Every symbol of the episode, prompt first, as the stream read it (ends with EOS)."""
    actions: tuple[int, ...] = field(default=(), compare=False, repr=False)
    """Per symbol: what the model sampled where its own choice decided that symbol (it can
    differ, e.g. a sampled newline ends the answer as EOS), else -1 (prompt, forced closing).
    These are the policy's actions in reinforcement learning."""


@dataclass
class _Row:
    """One question's progress through prompt -> thinking -> answer."""

    pending: deque[int]
    thinking: bytearray = field(default_factory=bytearray)
    symbols: list[int] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    answer: bytearray = field(default_factory=bytearray)
    steps_done: int = 0
    line_has_text: bool = False
    answering: bool = False
    forced: bool = False
    done: bool = False
    greedy_from: int | None = None
    """From this many thinking steps on, the row decodes greedily (None: never)."""

    @property
    def sampling(self) -> bool:
        return self.greedy_from is None or (
            not self.answering and self.steps_done < self.greedy_from
        )

    def close_thinking(self, forced: bool) -> int:
        self.forced, self.answering = forced, True
        self.pending.append(ANSWER)
        return END_THINK

    def next_symbol(self, sampled: int, budget: Budget) -> int:
        """The symbol this row pushes next, given what the model sampled for it."""
        symbol, action = self._decide(sampled, budget)
        self.symbols.append(symbol)
        self.actions.append(action)
        return symbol

    def _decide(self, sampled: int, budget: Budget) -> tuple[int, int]:
        if self.pending:
            return self.pending.popleft(), -1
        if not self.answering:
            if self.steps_done >= budget.max_steps or len(self.thinking) >= budget.max_bytes:
                return self.close_thinking(forced=True), -1
            if sampled >= 256:  # END_THINK or any control symbol: the model closes its thinking
                return self.close_thinking(forced=False), sampled
            self.think(sampled)
            return sampled, sampled
        if len(self.answer) >= budget.answer_bytes:
            self.done = True
            return EOS, -1
        if sampled >= 256 or sampled == NEWLINE:
            self.done = True
            return EOS, sampled
        self.answer.append(sampled)
        return sampled, sampled

    def think(self, byte: int) -> None:
        self.thinking.append(byte)
        if byte == NEWLINE:  # a step is a line with something other than white space
            self.steps_done += self.line_has_text
            self.line_has_text = False
        else:
            self.line_has_text |= not chr(byte).isspace()


def _pick(
    logits: torch.Tensor,
    rows: Sequence[_Row],
    live: Sequence[int],
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
) -> list[int]:
    """Each live row's next symbol: drawn at ``temperature``, or greedy where the row no
    longer samples."""
    drawn = sample_next(logits, temperature, top_k, generator).tolist()
    if temperature <= 0 or all(rows[r].sampling for r in live):
        return drawn
    best = logits.argmax(-1).tolist()
    return [d if rows[r].sampling else b for r, d, b in zip(live, drawn, best, strict=True)]


@torch.no_grad()
def solve(
    model: PDCLM,
    questions: Sequence[str],
    budget: Budget,
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    batch: int = 64,
    prefixes: Sequence[str] | None = None,
    sampled_steps: int | None = None,
) -> list[Solution]:
    """Think within ``budget``, then answer, for every question (``batch`` rows at a time).

    The thinking never exceeds the budget: when it runs out, END_THINK and ANSWER are pushed
    for the model and it must answer. ``prefixes`` (one per question) are thinking already
    written: the model continues after it (how a revision resumes before a flagged step).
    ``sampled_steps``: only that many thinking steps after the prefix are sampled at
    ``temperature``, the rest greedy (a step is re-drawn, not everything after it).
    Under several ranks each solves a share of the questions and every rank gets all solutions.
    """
    heads = list(prefixes) if prefixes is not None else [""] * len(questions)
    return spread(
        lambda part: _solve_here(
            model, part, budget, temperature, top_k, generator, batch, sampled_steps
        ),
        list(zip(questions, heads, strict=True)),
    )


def _solve_here(
    model: PDCLM,
    pairs: Sequence[tuple[str, str]],
    budget: Budget,
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
    batch: int,
    sampled_steps: int | None = None,
) -> list[Solution]:
    """Solve (question, thinking prefix) pairs in this process.

    Questions go in batches of similar length (then back in their order), and the part of the
    prompt every row of a batch has is read in one parallel pass (:meth:`Stream.prefill`);
    pushed symbol by symbol, prompts were most of an evaluation's steps."""
    heads = [[*prompt(q), *pre.encode()] for q, pre in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(heads[i]))
    solved: dict[int, Solution] = {}
    for lo in range(0, len(order), batch):
        part = order[lo : lo + batch]
        rows = []
        for i in part:
            row = _Row(deque(heads[i]))
            for byte in pairs[i][1].encode():
                row.think(byte)
            rows.append(row)
            if sampled_steps is not None:
                row.greedy_from = row.steps_done + sampled_steps
        live = list(range(len(rows)))  # stream row j is question part[live[j]]
        stream = model.start_stream(len(rows))
        shared = min(len(r.pending) for r in rows)  # >= 1: every prompt starts with BOS
        read = [[r.pending.popleft() for _ in range(shared)] for r in rows]
        for r, symbols in zip(rows, read, strict=True):
            r.symbols += symbols
            r.actions += [-1] * shared
        logits = stream.prefill(torch.tensor(read))
        sampled = _pick(logits, rows, live, temperature, top_k, generator)
        while True:
            symbols = [rows[r].next_symbol(s, budget) for r, s in zip(live, sampled, strict=True)]
            keep = [j for j, r in enumerate(live) if not rows[r].done]
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch
                stream.select(torch.tensor(keep))
                live, symbols = [live[j] for j in keep], [symbols[j] for j in keep]
            logits = stream.push(torch.tensor(symbols))
            sampled = _pick(logits, rows, live, temperature, top_k, generator)
        for i, r in zip(part, rows, strict=True):
            solved[i] = Solution(
                pairs[i][0],
                split_steps(r.thinking.decode("utf-8", "replace")),
                r.answer.decode("utf-8", "replace").strip(),
                r.forced,
                len(r.thinking),
                tuple(r.symbols),
                tuple(r.actions),
            )
    return [solved[i] for i in range(len(pairs))]


_NUM = r"-?\d+(?:\.\d+)?"
_EQUATION = re.compile(rf"({_NUM})\s*([+\-*/])\s*({_NUM})\s*=\s*({_NUM})")
_REWRITE = re.compile(rf"^\s*({_NUM})\s*([+\-*/])\s*({_NUM})\s*(?:=\s*({_NUM})\s*)?$")
"""A step that is one operation, e.g. ``10 + 4`` or ``14 + 0 = 14``: after a bare one
(``11 + 3``, no ``=``) it rewrites that one, so both must have the same value."""
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _apply(a: str, op: str, b: str) -> float | None:
    x, y = float(a), float(b)
    return None if op == "/" and y == 0 else _OPERATORS[op](x, y)


def _close(x: float, y: float) -> bool:
    return abs(x - y) <= 1e-6 * max(1.0, abs(x))


def check_equation(step: str) -> bool | None:
    """True/False for the last ``a op b = c`` in a step; None if the step has no equation."""
    found = _EQUATION.findall(step)
    if not found:
        return None
    a, op, b, c = found[-1]
    value = _apply(a, op, b)
    return value is not None and _close(value, float(c))


_QUESTION_OPERATION = re.compile(rf"(?<![\w.])({_NUM})\s*([+\-*/])\s*({_NUM})(?!\w|\.\d)")
_ANY_OPERATION = re.compile(r"(?=\d\s*[+\-*/]\s*-?\d)")  # a lookahead: overlapping ones count


def question_value(question: str) -> float | None:
    """The value of the one operation a question asks (``Calculate 9 + 5.`` -> 14), or None
    where it asks none or several (then nothing here knows where its thinking starts)."""
    found = _QUESTION_OPERATION.findall(question)
    if len(found) != 1 or len(_ANY_OPERATION.findall(question)) != 1:
        return None
    return _apply(*found[0])


def check_steps(steps: Sequence[str], question: str = "") -> tuple[bool | None, ...]:
    """Per step: its equation checked, and a one-operation step after a bare one checked to
    keep its value (``9 + 5`` then ``10 + 4``: True; then ``12 + 3``: False). A first
    one-operation step must keep the value of the one operation the question asks, if it
    asks one: ``Calculate 9 + 5.`` then ``9 + 4`` miscopies the question."""
    out: list[bool | None] = []
    before = question_value(question)
    for step in steps:
        ok = check_equation(step)
        m = _REWRITE.match(step)
        value = _apply(m[1], m[2], m[3]) if m else None
        if value is not None and before is not None and ok is not False:
            ok = _close(value, before)
        out.append(ok)
        before = value if m and m[4] is None else None  # only a bare operation carries on
    return tuple(out)


def last_value(steps: Sequence[str]) -> str | None:
    """The last derived value: the right-hand side of the last ``... = v`` in the steps."""
    for step in reversed(steps):
        m = re.findall(rf"=\s*({_NUM})\s*$", step)
        if m:
            return m[-1]
    return None


@dataclass(frozen=True)
class Verdict:
    steps: tuple[bool | None, ...]
    """Per step: verified, refuted, or None where nothing checkable was found."""
    answer_follows: bool | None
    """Does the answer equal the last derived value (None: no derived value)."""

    @property
    def consistent(self) -> bool:
        return False not in self.steps and self.answer_follows is not False

    @property
    def first_error(self) -> int | None:
        return next((i for i, ok in enumerate(self.steps) if ok is False), None)


def check(
    steps: Sequence[str], answer: str, task: Task | None = None, question: str = ""
) -> Verdict:
    """Consistency of a chain of thought; uses the task generator's step checker when known,
    else the generic one, which reads ``question`` for where the thinking starts."""
    if task is not None and task.generator in GENERATORS:
        per_step: tuple[bool | None, ...] = tuple(
            GENERATORS[task.generator].check_steps(task, steps)
        )
    else:
        per_step = check_steps(steps, question)
    last = last_value(steps)
    follows = None
    if last is not None and re.fullmatch(_NUM, answer.strip()):
        follows = abs(float(last) - float(answer.strip())) < 1e-6
    elif last is not None and (task is None or task.generator not in GENERATORS):
        follows = False  # a derived number, then an answer that is not one
    # (a generator's own answer format, e.g. registers' ``a=1 b=2 c=4``, is not a number:
    # there the task's checker has read the steps, and the answer is the verifier's to judge)
    return Verdict(per_step, follows)


@torch.no_grad()
def revise_refuted(
    model: PDCLM,
    questions: Sequence[str],
    first: Sequence[Solution],
    budget: Budget,
    retries: int = 3,
    samples: int = 2,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch: int = 64,
) -> list[Solution]:
    """Checked decoding: each solution whose own steps the consistency check refutes resumes
    just before its first refuted step (or after its last step, where only the answer fails
    to follow), ``samples`` continuations sampled each try, at most ``retries`` tries; a try
    starts from the longest verified prefix found so far. The first consistent continuation
    replaces the solution; where none is found it stands.

    Only the generic check is used (:func:`check_steps`: the model's own equations and
    rewrites, recomputed), never a task's checker, which derives the true intermediate
    states from the question: a verifier that knows the answer would make this a solver."""
    out = list(first)
    verdicts = [check(s.steps, s.answer, question=s.question) for s in first]
    keep = {i: _verified(s, v) for i, (s, v) in enumerate(zip(first, verdicts, strict=True))}
    todo = [i for i, v in enumerate(verdicts) if not v.consistent]
    for _ in range(retries):
        if not todo:
            break
        rows = [i for i in todo for _ in range(samples)]
        prefixes = ["".join(step + "\n" for step in out[i].steps[: keep[i]]) for i in rows]
        qs = [questions[i] for i in rows]
        sols = solve(
            model,
            qs,
            budget,
            temperature,
            generator=generator,
            batch=batch,
            prefixes=prefixes,
            sampled_steps=1,
        )
        for i, sol in zip(rows, sols, strict=True):
            if i not in todo:
                continue  # an earlier sample of this try already passed
            v = check(sol.steps, sol.answer, question=sol.question)
            if v.consistent:
                out[i] = sol
                todo.remove(i)
            elif (stands := _verified(sol, v)) > keep[i]:
                out[i], keep[i] = sol, stands  # resume from further on next time
        # a solution that never passes is the model's first answer, not its last try
    return [first[i] if i in todo else s for i, s in enumerate(out)]


def _verified(sol: Solution, verdict: Verdict) -> int:
    """How many leading steps stand: those before the first refuted one, or all of them."""
    return len(sol.steps) if verdict.first_error is None else verdict.first_error


def agreement(answers: Sequence[str]) -> dict[str, object]:
    """Majority answer across samples, the share that agrees with it, and a disagreement flag."""
    counts = Counter(a.strip() for a in answers)
    majority, n = counts.most_common(1)[0] if counts else ("", 0)
    share = n / max(1, len(answers))
    return {"majority": majority, "agreement": share, "disagree": share < 1.0}


@torch.no_grad()
def answer_logprob(model: PDCLM, question: str, answer: str) -> float:
    """log p(answer | question) in nats, answering directly (empty thinking)."""
    head = [*prompt(question), END_THINK, ANSWER]
    symbols = head + list(answer.encode()) + [EOS]
    tokens = torch.tensor([symbols])
    logp = F.log_softmax(model(tokens).float(), dim=-1)[0]
    targets = tokens[0, 1:]
    picked = logp.gather(1, targets[:, None])[:, 0]
    return float(picked[len(head) - 1 :].sum())


def source_reliance(model: PDCLM, context: str, question: str, answer: str) -> dict[str, float]:
    """How much the answer leans on the context: log p(a | context, q) - log p(a | q)."""
    with_ctx = answer_logprob(model, with_context(context, question), answer)
    without = answer_logprob(model, question, answer)
    gain = with_ctx - without
    return {
        "logp_with_context": with_ctx,
        "logp_without_context": without,
        "context_gain_nats": gain,
        "context_share": float(torch.sigmoid(torch.tensor(gain))),
    }
