"""Verifiable reasoning tasks for the cognitive loop: sources, held-out sets, curriculum.

Two kinds of source share one interface: the project's own generators (with gold step-by-step
traces, :mod:`pdclm.data.generators`) and datasets of the ``reasoning-gym`` package (scored by
its own ``score_answer``). Every source has a difficulty knob ``level`` (1 = easiest). Where a
trace writer in ``GYM_TRACES`` can work one out, reasoning-gym items carry gold thinking too, in
the conventions of :mod:`pdclm.cognition.ccm` (each ``a op b = c`` true, the last ``= v`` the
answer), so the same consistency checks and step rewards apply to them.

Known traps, designed around:
- reasoning-gym builds item i from seed + i, so neighbouring seeds share almost every item and
  some easy configurations have only a few hundred distinct questions. Held-out sets are drawn
  from seeds far from the training seeds, and training items whose question string is in a
  held-out set are dropped.
- Constant answers score high on some tasks (letter_counting answered "1"), so every accuracy
  is reported beside the best constant answer's; and partial credit can be gamed ("6 " scores
  0.5), so only a full score counts as correct.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdclm.data.generators import GENERATORS, Task, eval_steps

EVAL_SEED = 1_000_000_007
"""Held-out items come from seeds at and above this; training seeds stay far below it."""
DEV_SEED = EVAL_SEED + 10_000
"""Development items (the probes that steer training: curriculum, Phase 3's best-model
choice) come from seeds at and above this, disjoint from the final evaluation's."""


@dataclass(frozen=True)
class Item:
    source: str
    level: int
    question: str
    answer: str
    steps: tuple[str, ...] = ()
    """Gold thinking (empty where a source has none)."""
    entry: Any = field(default=None, compare=False, hash=False)
    """What the source's scorer needs."""

    @property
    def task(self) -> Task | None:
        """The generator's task, for its task-aware step checks (None for reasoning-gym)."""
        return self.entry if isinstance(self.entry, Task) else None


# level -> reasoning-gym config overrides; level 1 is the "easy level" the goals refer to
GYM_LEVELS: dict[str, dict[int, dict[str, Any]]] = {
    "basic_arithmetic": {
        1: dict(
            min_terms=2,
            max_terms=2,
            min_digits=1,
            max_digits=1,
            operators=("+", "-"),
            allow_parentheses=False,
            allow_negation=False,
        ),
        2: dict(
            min_terms=2,
            max_terms=3,
            min_digits=1,
            max_digits=2,
            operators=("+", "-", "*"),
            allow_negation=False,
        ),  # parentheses stay allowed: without them the package evaluates left to right
        3: dict(
            min_terms=3,
            max_terms=4,
            min_digits=1,
            max_digits=2,
            operators=("+", "-", "*"),
            allow_negation=False,
        ),
    },
    "chain_sum": {
        1: dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
        2: dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
        3: dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2),
    },
    "spell_backward": {
        1: dict(min_word_len=3, max_word_len=4),
        2: dict(min_word_len=3, max_word_len=6),
        3: dict(min_word_len=3, max_word_len=8),
    },
    "letter_counting": {
        1: dict(min_words=3, max_words=5),
        2: dict(min_words=5, max_words=8),
        3: dict(min_words=8, max_words=12),
    },
    "word_sequence_reversal": {
        1: dict(min_words=2, max_words=3),
        2: dict(min_words=3, max_words=5),
        3: dict(min_words=5, max_words=8),
    },
    "count_bits": {
        1: dict(min_n=1, max_n=255),
        2: dict(min_n=1, max_n=65_535),
        3: dict(min_n=1, max_n=2**24),
    },
    "simple_equations": {
        1: dict(
            min_terms=2,
            max_terms=2,
            min_value=1,
            max_value=20,
            operators=("+", "-"),
            operators_weights=[0.5, 0.5],
        ),
        2: dict(min_terms=2, max_terms=3, min_value=1, max_value=50),
        3: dict(min_terms=2, max_terms=4, min_value=1, max_value=100),
    },
    "number_sorting": {
        1: dict(
            min_numbers=3,
            max_numbers=3,
            min_decimals=0,
            max_decimals=0,
            min_value=-20.0,
            max_value=20.0,
        ),
        2: dict(min_numbers=3, max_numbers=5, min_decimals=0, max_decimals=0),
        3: dict(min_numbers=5, max_numbers=8, min_decimals=0, max_decimals=1),
    },
}

_INT = r"-?\d+"
_EXPRESSION = re.compile(rf"\s*({_INT})((?:\s*[+\-*]\s*{_INT})*)\s*")


COUNT_UP_TO = 10
"""Largest operand that a one-operation ``a + b`` / ``a - b`` trace counts out (see below)."""


def counting_steps(a: int, op: str, b: int) -> tuple[str, ...]:
    """``a + b`` as ``(a+1) + (b-1)``, line by line, until the right operand is 0:
    ``9 + 5``, ``10 + 4``, ..., ``14 + 0 = 14`` (``-`` counts down the same way).

    Why: the easy levels' questions are single-digit sums; a trace that states the fact
    (``9 + 5 = 14``) teaches a table, and the held-out questions are exactly the table's rows
    that training never shows (a Phase 2 model was right on 0.93 of trained questions and
    0.52 of held-out ones). Counting builds every answer from steps that every trained
    question exercises (n -> n +- 1), so held-out questions need nothing unseen (bar the
    two whose answers no other question has: 10 + 10 and 0 - 10): with the
    same Phase 1 model and steps, held-out basic_arithmetic went 0.42 -> 0.60 and chain_sum
    0.40 -> 0.88 (docs/phase2_steps.md). Every line has the question's value, which
    :func:`pdclm.cognition.ccm.check` verifies line to line. Counting from the larger
    operand instead (``3 + 5`` as ``5 + 3``, ...) shortens the chains but lowered held-out
    basic_arithmetic 0.76 -> 0.58 over two seeds: the model miscopies a reordered first line."""
    step = 1 if op == "+" else -1
    lines = [f"{a + step * i} {op} {b - i}" for i in range(b + 1)]
    lines[-1] += f" = {a + step * b}"
    return tuple(lines)


def _arithmetic_trace(entry: dict) -> tuple[str, ...]:
    """Integer ``+ - *`` expressions, as :class:`~pdclm.data.generators.Arithmetic` writes them,
    except one ``+`` or ``-`` of operands 0..``COUNT_UP_TO``, which is counted out
    (:func:`counting_steps`); () for parentheses, division or decimals, or where the
    package's answer disagrees."""
    m = _EXPRESSION.fullmatch(entry["metadata"]["expression"])
    if not m:
        return ()
    pairs = re.findall(rf"([+\-*])\s*({_INT})", m[2])
    nums, ops = [int(m[1]), *(int(n) for _, n in pairs)], [op for op, _ in pairs]
    steps, value = eval_steps(nums, ops)
    if str(value) != entry["answer"]:
        return ()
    if ops in (["+"], ["-"]) and all(0 <= n <= COUNT_UP_TO for n in nums):
        return counting_steps(nums[0], ops[0], nums[1])
    return steps


def _spell_backward_trace(entry: dict) -> tuple[str, ...]:
    word = entry["metadata"]["word"]
    if word[::-1] != entry["answer"]:
        return ()
    return f"letters: {' '.join(word)}", f"reversed: {' '.join(word[::-1])}"


def _word_sequence_reversal_trace(entry: dict) -> tuple[str, ...]:
    """The words numbered in order, one per line: the answer then reads them back from the
    last line up, each word found by its number rather than by its place in a long line."""
    words = entry["metadata"]["words"]
    if ", ".join(reversed(words)) != entry["answer"]:
        return ()
    return tuple(f"{i} {w}" for i, w in enumerate(words, 1))


def _letter_counting_trace(entry: dict) -> tuple[str, ...]:
    """One count per word, case-insensitive as the package counts."""
    words, letter = entry["metadata"]["span"], entry["metadata"]["target_letter"].lower()
    counts = [w.lower().count(letter) for w in words]
    if str(sum(counts)) != entry["answer"]:
        return ()
    return (*(f"{w}: {k}" for w, k in zip(words, counts, strict=True)), f"total = {sum(counts)}")


def _count_bits_trace(entry: dict) -> tuple[str, ...]:
    """``binary ...`` rather than ``n = ...`` so that the only ``= v`` is the answer."""
    bits = bin(entry["metadata"]["number"])[2:]
    if str(bits.count("1")) != entry["answer"]:
        return ()
    return f"binary {bits}", f"ones = {bits.count('1')}"


def _minus(a: int, b: int) -> str:
    return f"{a} - {b}" if b >= 0 else f"{a} + {-b}"


def _simple_equation_trace(entry: dict) -> tuple[str, ...]:
    """Two-term equations ``k*x + c = b`` in any order and sign (``k`` and ``c`` optional):
    move the constant across, then divide by the coefficient; () for anything else."""
    x = entry["metadata"]["variable"]
    lhs, _, rhs = entry["metadata"]["equation"].replace(" ", "").partition("=")
    terms = re.findall(r"([+-]?)([^+-]+)", lhs)
    if len(terms) > 2 or "".join(map("".join, terms)) != lhs or not re.fullmatch(_INT, rhs):
        return ()
    coef, const, b = 0, 0, int(rhs)
    for sign, term in terms:
        s = -1 if sign == "-" else 1
        var = re.fullmatch(rf"(\d+)\*{x}|{x}\*(\d+)|{x}", term)
        if term.isdecimal():
            const += s * int(term)
        elif var and not coef:
            coef = s * int(var[1] or var[2] or 1)
        else:
            return ()
    if not coef or (b - const) % coef:
        return ()
    k, value = abs(coef), (b - const) // coef
    if const == 0:
        steps: tuple[str, ...] = (f"{x} = {b} / {coef} = {value}",)
    else:
        rest = _minus(b, const) if coef > 0 else _minus(const, b)
        head = x if k == 1 else f"{k}*{x}"
        steps = (f"{head} = {rest} = {k * value}",)
        if k != 1:
            steps += (f"{x} = {k * value} / {k} = {value}",)
    return steps if str(value) == entry["answer"] else ()


def _number_sorting_trace(entry: dict) -> tuple[str, ...]:
    """The sorted numbers as a plain line; the answer is then only their list format."""
    md = entry["metadata"]
    return (f"{md['direction']}: {' '.join(md['sorted_numbers'])}",)


GYM_TRACES: dict[str, Callable[[dict], tuple[str, ...]]] = {
    "basic_arithmetic": _arithmetic_trace,
    "chain_sum": _arithmetic_trace,
    "spell_backward": _spell_backward_trace,
    "word_sequence_reversal": _word_sequence_reversal_trace,
    "letter_counting": _letter_counting_trace,
    "count_bits": _count_bits_trace,
    "simple_equations": _simple_equation_trace,
    "number_sorting": _number_sorting_trace,
}
"""reasoning-gym task -> gold thinking for one of its entries (() where it cannot tell)."""

_INSTRUCTION_MARKERS = ("\nPlease follow the instruction below:",)


def strip_instructions(question: str) -> str:
    """Drop reasoning-gym's long formatting instruction blocks (they dwarf a small model's
    context and carry no information about the instance)."""
    for marker in _INSTRUCTION_MARKERS:
        question = question.split(marker)[0]
    return question.strip()


class GymSource:
    """A reasoning-gym dataset; its own ``score_answer`` is the verifier."""

    def __init__(self, name: str) -> None:
        if name not in GYM_LEVELS:
            raise KeyError(f"no difficulty levels defined for reasoning-gym task {name!r}")
        self.name = name
        self.max_level = max(GYM_LEVELS[name])

    def sample(self, seed: int, level: int, n: int) -> list[Item]:
        import reasoning_gym

        level = min(max(1, level), self.max_level)
        ds = reasoning_gym.create_dataset(
            self.name, seed=seed, size=n, **GYM_LEVELS[self.name][level]
        )
        trace = GYM_TRACES.get(self.name, lambda _: ())
        return [
            Item(
                self.name,
                level,
                strip_instructions(e["question"]),
                str(e["answer"]),
                trace(e),
                (ds, e),
            )
            for e in ds
        ]

    def score(self, item: Item, answer: str) -> float:
        """1 only for a full score; surrounding whitespace is format, not content (the package
        itself gives such answers partial credit, which we never pay)."""
        ds, entry = item.entry
        return float(ds.score_answer(answer.strip(), entry) >= 1.0)

    def space(self, level: int) -> int | None:
        """None: the package's generators are not ours to count (:func:`question_space`
        samples them)."""
        return None


class OwnSource:
    """One of the project's generators: gold traces, strict verifier, per-step checks."""

    def __init__(self, name: str, max_level: int = 5) -> None:
        self.name, self.gen, self.max_level = name, GENERATORS[name], max_level

    def sample(self, seed: int, level: int, n: int) -> list[Item]:
        level = min(max(1, level), self.max_level)
        rng = random.Random(f"{self.name}:{seed}:{level}")
        tasks = [self.gen.make(rng, level) for _ in range(n)]
        return [Item(self.name, level, t.question, t.answer, t.steps, t) for t in tasks]

    def score(self, item: Item, answer: str) -> float:
        return self.gen.score(item.entry, answer)

    def space(self, level: int) -> int | None:
        """The generator's own count of its distinct questions at ``level`` (None where it has
        none: :func:`question_space` then samples)."""
        count = getattr(self.gen, "space", None)
        return None if count is None else count(min(max(1, level), self.max_level))


Source = GymSource | OwnSource


def make_source(name: str) -> Source:
    return OwnSource(name) if name in GENERATORS else GymSource(name)


def held_out(
    source: Source,
    level: int,
    n: int,
    start: int = EVAL_SEED,
    exclude: frozenset[str] = frozenset(),
) -> list[Item]:
    """``n`` distinct held-out questions, from seeds far from any training seed: the final
    evaluation's from ``EVAL_SEED``, a development set's from ``DEV_SEED`` with the evaluation
    questions passed as ``exclude`` (so no probe that steers training sees them)."""
    items, seen, seed = [], set(exclude), start
    while len(items) < n and seed < start + 50:
        for item in source.sample(seed, level, n):
            if item.question not in seen:
                seen.add(item.question)
                items.append(item)
        seed += 1
    return items[:n]


@dataclass(frozen=True)
class QuestionSpace:
    """How many distinct questions a source asks at one level: a small space is memorised, and
    a held-out set that takes much of it leaves little to train on."""

    distinct: int
    """Exact: the count. Sampled: the distinct questions seen, a lower bound."""
    exact: bool
    estimate: float | None = None
    """Sampled: the Chao1 capture-recapture estimate ``seen + f1 (f1 - 1) / (2 (f2 + 1))`` (f1,
    f2: questions seen once, twice); None when every draw was new (only ``>= distinct`` is
    known). Exact: the count."""
    draws: int = 0
    """Items sampled (0 when counted)."""
    method: str = ""

    @property
    def size(self) -> float:
        """The best figure for the space: the count, the estimate, else the lower bound."""
        return float(self.distinct) if self.estimate is None else max(self.estimate, self.distinct)

    @property
    def lower_bound(self) -> bool:
        """Only ``>= distinct`` is known (so a share of it is an upper bound)."""
        return not self.exact and self.estimate is None

    def __str__(self) -> str:
        if self.exact or self.estimate == self.distinct:
            return f"{self.distinct:,}"
        if self.estimate is None:
            return f">= {self.distinct:,}"
        return f"~{self.estimate:,.0f}"


def question_space(source: Source, level: int, draws: int = 2000, seed: int = 0) -> QuestionSpace:
    """The number of distinct questions ``source`` asks at ``level``: exact where the source
    can count them (the project's generators, from their parameters), else estimated from
    ``draws`` sampled items (item ``i`` of a reasoning-gym dataset uses seed ``seed + i``, so
    one dataset is ``draws`` independent draws). Every sampled question seen at least twice
    means the space is (almost surely) exhausted; every draw new means it is far larger than
    ``draws``; in between, Chao1 estimates it (a lower-bound estimator: uneven draw
    probabilities can only hide questions)."""
    count = source.space(level)
    if count is not None:
        return QuestionSpace(count, True, float(count), 0, "counted from the generator")
    return _sampled_space(source.name, level, draws, seed)


@functools.lru_cache(maxsize=256)
def _sampled_space(name: str, level: int, draws: int, seed: int) -> QuestionSpace:
    """Cached by name: each run's report and its tests ask for the same spaces."""
    seen = Counter(it.question for it in make_source(name).sample(seed, level, draws))
    freq = Counter(seen.values())
    f1, f2, n = freq[1], freq[2], len(seen)
    how = f"{draws:,} draws: {n:,} distinct, {f1:,} seen once, {f2:,} twice"
    if n == draws:
        return QuestionSpace(n, False, None, draws, f"{how}; every draw new, a lower bound")
    if f1 == 0:
        return QuestionSpace(n, False, float(n), draws, f"{how}; exhausted by sampling")
    return QuestionSpace(n, False, n + f1 * (f1 - 1) / (2 * (f2 + 1)), draws, f"{how}; Chao1")


def question_spaces(
    names: Sequence[str], held: Iterable[Item], draws: int = 2000
) -> list[dict[str, Any]]:
    """Per task and every level it can be trained at: its question space and the share of
    it the held-out questions (``held``: evaluation and development sets) take from training."""
    taken: dict[tuple[str, int], set[str]] = {}
    for it in held:
        taken.setdefault((it.source, it.level), set()).add(it.question)
    rows = []
    for name in names:
        source = make_source(name)
        for level in range(1, source.max_level + 1):
            space = question_space(source, level, draws)
            n_held = len(taken.get((name, level), ()))
            rows.append(
                {
                    "task": name,
                    "level": level,
                    "space": str(space),
                    "distinct": space.distinct,
                    "exact": space.exact,
                    "estimate": space.estimate,
                    "method": space.method,
                    "held_out": n_held,
                    "held_out_share": n_held / space.size if space.size else 1.0,
                    "share_is_upper_bound": space.lower_bound,
                }
            )
    return rows


def training_items(source: Source, level: int, n: int, seed: int, exclude: set[str]) -> list[Item]:
    """``n`` training items from ``seed`` whose questions are not in ``exclude`` (held-out).

    Fewer (even none) when the held-out set has taken (nearly) every question a task has at
    this level; repeats are allowed otherwise, as in any sampled training stream.
    """
    if seed >= EVAL_SEED:
        raise ValueError("training seeds must stay below EVAL_SEED")
    out: list[Item] = []
    for _ in range(8):
        out += [it for it in source.sample(seed, level, n) if it.question not in exclude]
        if len(out) >= n:
            break
        seed += 7919  # far enough that reasoning-gym's seed + i items do not repeat
    return out[:n]


UNANSWERABLE = "unknown"
"""The answer to a question that does not give what it asks about."""
UNANSWERABLE_FROM = ("basic_arithmetic", "chain_sum", "arithmetic", "bank", "registers")
"""Tasks whose numbers are all operands: hiding one leaves a question with no answer."""


def unanswerable(item: Item, rng: random.Random) -> Item | None:
    """The question with one of its numbers replaced by a letter it never defines (None if
    the task has no such numbers). Its answer is :data:`UNANSWERABLE`."""
    numbers = list(re.finditer(r"\d+", item.question))
    if item.source not in UNANSWERABLE_FROM or not numbers:
        return None
    m, name = rng.choice(numbers), rng.choice("nkxyz")
    question = item.question[: m.start()] + name + item.question[m.end() :]
    return Item(item.source, item.level, question, UNANSWERABLE, (f"{name} is not given",))


def verify(item: Item, answer: str) -> bool:
    """Full credit by the task's verifier; an unanswerable question wants exactly that said."""
    if item.answer == UNANSWERABLE:
        return answer.strip().lower() == UNANSWERABLE
    return make_source(item.source).score(item, answer) >= 1.0


def constant_baseline(source: Source, items: list[Item], candidates: int = 10) -> tuple[str, float]:
    """The best single answer to give to every question, and its accuracy on ``items``."""
    common = [a for a, _ in Counter(it.answer for it in items).most_common(candidates)]
    for extra in ("0", "1", "2", "Yes", "No"):
        if extra not in common:
            common.append(extra)
    scored = [(a, sum(source.score(it, a) for it in items) / max(1, len(items))) for a in common]
    return max(scored, key=lambda x: x[1])


class Curriculum:
    """Per task: a difficulty level that follows recent success, and sampling weights that
    favour tasks the model solves sometimes but not always (success p -> weight p(1-p))."""

    def __init__(
        self,
        names: list[str],
        max_levels: dict[str, int],
        window: int = 32,
        raise_at: float = 0.8,
        lower_at: float = 0.2,
        floor: float = 0.05,
    ) -> None:
        self.level = dict.fromkeys(names, 1)
        self.max_level = max_levels
        self.window, self.raise_at, self.lower_at, self.floor = window, raise_at, lower_at, floor
        self.recent: dict[str, deque[float]] = {n: deque(maxlen=window) for n in names}

    def success(self, name: str) -> float | None:
        r = self.recent[name]
        return sum(r) / len(r) if r else None

    def record(self, name: str, correct: bool, level: int | None = None) -> None:
        """Log one attempt; move the level once a full window says it is too easy or too hard.

        ``level``: the level the attempt was made at. An attempt at another level than the
        task's present one is not evidence about it and is dropped: a probe that raises a
        level part-way through must not count its remaining, easier answers toward the new
        level (one of them read as success 1.00 and gave the raised task the floor weight)."""
        if level is not None and level != self.level[name]:
            return
        r = self.recent[name]
        r.append(float(correct))
        if len(r) < self.window:
            return
        p = sum(r) / len(r)
        if p >= self.raise_at and self.level[name] < self.max_level[name]:
            self.level[name] += 1
            r.clear()
        elif p <= self.lower_at and self.level[name] > 1:
            self.level[name] -= 1
            r.clear()

    def weights(self) -> dict[str, float]:
        """Unknown success counts as 0.5 (most informative); never below ``floor``."""
        out = {}
        for name in self.level:
            p = self.success(name)
            p = 0.5 if p is None else p
            out[name] = max(self.floor, p * (1 - p))
        return out

    def pick(self, rng: random.Random) -> tuple[str, int]:
        w = self.weights()
        name = rng.choices(list(w), weights=list(w.values()))[0]
        return name, self.level[name]

    def state(self) -> dict[str, Any]:
        return {"level": dict(self.level), "recent": {k: list(v) for k, v in self.recent.items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.level.update(state["level"])
        for k, v in state["recent"].items():
            self.recent[k] = deque(v, maxlen=self.window)
