"""Character-level tasks in the spirit of CUTE (Edman et al., 2024): generated questions about
the letters of a word, the words of a sentence or the digits of a number, each with a verifier.

    copy: house                                   => house
    spell: house                                  => h o u s e
    reverse: house                                => esuoh
    count s in: glasses                           => 3
    insert x after every s: glasses               => glasxsxesx
    delete every s: glasses                       => glae
    replace every s with t: glasses               => glattet
    swap beta and gamma: alpha beta gamma delta   => alpha gamma beta delta
    copy number: 40917                            => 40917

An item is the text ``question\\n=> answer\\n``: a model reads everything up to ``=> `` and
its answer is what it writes before the next newline, matched exactly. A verifier parses the
question strictly and recomputes the answer, so it needs nothing but the question.

Words are the 3-8-letter lowercase words of the comments in the Python standard library
(installed with Python: no download). Every word and number is held out or not by a hash of
its string, and an item draws only strings of its own side, so no held-out item, and no word
or number of one, is ever part of a training item.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pdclm.data.ingest import stdlib_sources

MARK = "=> "
"""What separates a question from its answer (the prompt ends with it)."""
MIN_WORD, MAX_WORD = 3, 8
"""Letters of a task word."""
MIN_DIGITS, MAX_DIGITS = 3, 10
"""Digits of a ``number`` item."""
MIN_SENTENCE, MAX_SENTENCE = 3, 5
"""Words of a ``swap`` sentence."""
MIN_COUNT = 3
"""A comment word is kept if it occurs this often (once-off typos and identifiers drop out)."""
LETTERS = string.ascii_lowercase

_WORD_RE = re.compile(rf"(?<![A-Za-z0-9_])[a-z]{{{MIN_WORD},{MAX_WORD}}}(?![A-Za-z0-9_])")


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The task words, sorted: lowercase words of the standard library's ``#`` comments
    (English prose far more than code), each used at least :data:`MIN_COUNT` times."""
    counts: Counter[str] = Counter()
    for path in stdlib_sources():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            at = line.find("#")
            if at >= 0:
                counts.update(_WORD_RE.findall(line, at + 1))
    return tuple(sorted(w for w, n in counts.items() if n >= MIN_COUNT))


def is_held_out(text: str, share: float) -> bool:
    """Whether a word or number belongs to the held-out side (a hash of the string: the same
    answer on every machine and in every process)."""
    digest = hashlib.sha256(f"chars:{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass(frozen=True)
class Pool:
    """The strings one side (training or held out) draws its items from."""

    words: tuple[str, ...]
    held_out: bool
    share: float

    def word(self, rng: random.Random) -> str:
        return rng.choice(self.words)

    def number(self, rng: random.Random) -> str:
        """A number without a leading zero, drawn again until it is on this pool's side."""
        while True:
            n = rng.randint(MIN_DIGITS, MAX_DIGITS)
            text = rng.choice("123456789") + "".join(rng.choices(string.digits, k=n - 1))
            if is_held_out(text, self.share) == self.held_out:
                return text


@functools.lru_cache(maxsize=4)
def pools(share: float) -> tuple[Pool, Pool]:
    """The training and the held-out pool; ``share`` of the words (and numbers) are held out."""
    words = vocabulary()
    held = tuple(w for w in words if is_held_out(w, share))
    train = tuple(w for w in words if not is_held_out(w, share))
    return Pool(train, False, share), Pool(held, True, share)


@dataclass(frozen=True)
class CharItem:
    task: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return f"{self.question}\n{MARK}"

    @property
    def text(self) -> str:
        return f"{self.prompt}{self.answer}\n"


_FIELDS = {
    "word": f"[a-z]{{{MIN_WORD},{MAX_WORD}}}",
    "letter": "[a-z]",
    "new": "[a-z]",
    "first": f"[a-z]{{{MIN_WORD},{MAX_WORD}}}",
    "second": f"[a-z]{{{MIN_WORD},{MAX_WORD}}}",
    "words": f"[a-z]{{{MIN_WORD},{MAX_WORD}}}(?: [a-z]{{{MIN_WORD},{MAX_WORD}}})"
    f"{{{MIN_SENTENCE - 1},{MAX_SENTENCE - 1}}}",
    "number": f"[1-9][0-9]{{{MIN_DIGITS - 1},{MAX_DIGITS - 1}}}",
}
"""What each question field may hold, for the strict question parser."""


@dataclass(frozen=True)
class CharTask:
    """One task: a question template, how its fields are drawn, and the answer they make.
    The generator and the verifier share ``answer``; the verifier reads the fields back from
    the question text alone."""

    name: str
    template: str
    draw: Callable[[random.Random, Pool], dict[str, str]]
    answer: Callable[..., str | None]

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"\{(\w+)\}", self.template)
        return re.compile(
            "".join(
                f"(?P<{p}>{_FIELDS[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts)
            )
        )

    def make(self, rng: random.Random, pool: Pool) -> CharItem:
        fields = self.draw(rng, pool)
        answer = self.answer(**fields)
        if answer is None:
            raise ValueError(f"{self.name}: drew fields with no answer: {fields}")
        return CharItem(self.name, self.template.format(**fields), answer)

    def solve(self, question: str) -> str | None:
        """The answer to a question in this task's format; None if it is not one."""
        m = self.pattern.fullmatch(question)
        return None if m is None else self.answer(**m.groupdict())

    def verify(self, question: str, answer: str) -> bool:
        gold = self.solve(question)
        return gold is not None and answer == gold


def _word(rng: random.Random, pool: Pool) -> dict[str, str]:
    return {"word": pool.word(rng)}


def _letter_of(rng: random.Random, pool: Pool) -> dict[str, str]:
    """A word and one of its letters (counting also asks about absent letters, a quarter of
    the time, so that 0 is an answer too)."""
    word = pool.word(rng)
    return {"word": word, "letter": rng.choice(word)}


def _count_draw(rng: random.Random, pool: Pool) -> dict[str, str]:
    fields = _letter_of(rng, pool)
    if rng.random() < 0.25:
        fields["letter"] = rng.choice(LETTERS)
    return fields


def _new_letter(rng: random.Random, pool: Pool) -> dict[str, str]:
    """A word, one of its letters and another letter."""
    fields = _letter_of(rng, pool)
    fields["new"] = rng.choice(LETTERS.replace(fields["letter"], ""))
    return fields


def _sentence(rng: random.Random, pool: Pool) -> dict[str, str]:
    """Distinct words and an adjacent pair of them (distinct: the pair is found one way only)."""
    words = rng.sample(pool.words, rng.randint(MIN_SENTENCE, MAX_SENTENCE))
    i = rng.randrange(len(words) - 1)
    return {"first": words[i], "second": words[i + 1], "words": " ".join(words)}


def _swap(first: str, second: str, words: str) -> str | None:
    ws = words.split(" ")
    pairs = [i for i in range(len(ws) - 1) if (ws[i], ws[i + 1]) == (first, second)]
    if len(pairs) != 1:
        return None
    i = pairs[0]
    ws[i], ws[i + 1] = second, first
    return " ".join(ws)


def _number(rng: random.Random, pool: Pool) -> dict[str, str]:
    return {"number": pool.number(rng)}


TASKS: dict[str, CharTask] = {
    t.name: t
    for t in (
        CharTask("copy", "copy: {word}", _word, lambda word: word),
        CharTask("spell", "spell: {word}", _word, lambda word: " ".join(word)),
        CharTask("reverse", "reverse: {word}", _word, lambda word: word[::-1]),
        CharTask(
            "count",
            "count {letter} in: {word}",
            _count_draw,
            lambda word, letter: str(word.count(letter)),
        ),
        CharTask(
            "insert",
            "insert {new} after every {letter}: {word}",
            _new_letter,
            lambda word, letter, new: word.replace(letter, letter + new),
        ),
        CharTask(
            "delete",
            "delete every {letter}: {word}",
            _letter_of,
            lambda word, letter: word.replace(letter, ""),
        ),
        CharTask(
            "substitute",
            "replace every {letter} with {new}: {word}",
            _new_letter,
            lambda word, letter, new: word.replace(letter, new),
        ),
        CharTask("swap", "swap {first} and {second}: {words}", _sentence, _swap),
        CharTask("number", "copy number: {number}", _number, lambda number: number),
    )
}
"""The character tasks by name (``config.CHARS_TASKS`` lists the same names)."""


def held_out_items(name: str, n: int, seed: int, share: float) -> list[CharItem]:
    """``n`` distinct held-out items of a task (fewer if its held-out strings run out first),
    the same on every call."""
    task, pool = TASKS[name], pools(share)[1]
    rng = random.Random(f"{seed}:chars-eval:{name}")
    items: dict[str, CharItem] = {}
    for _ in range(50 * n):
        item = task.make(rng, pool)
        items.setdefault(item.question, item)
        if len(items) == n:
            break
    return list(items.values())


def training_rows(
    names: list[str], share: float, seed: int, step: int, rows: range, row_bytes: int
) -> list[list[CharItem]]:
    """Rows ``rows`` of the training batch of ``step``: each a list of items, tasks drawn
    uniformly, whose texts fill at most ``row_bytes`` bytes. A row depends only on ``(seed,
    step, row)``, like every training batch, and draws only training strings."""
    pool = pools(share)[0]
    out = []
    for r in rows:
        rng = random.Random(f"{seed}:chars-train:{step}:{r}")
        row: list[CharItem] = []
        used = misses = 0
        while True:
            item = TASKS[rng.choice(names)].make(rng, pool)
            size = len(item.text.encode())
            if used + size > row_bytes:
                if row:
                    break
                misses += 1  # longer than a whole row: never trained on (the bench checks sizes)
                if misses > 100:
                    raise ValueError(f"no character-task item fits in {row_bytes} bytes")
                continue
            row.append(item)
            used += size
        out.append(row)
    return out
