"""Robustness of reasoning to the wording of a question: the same held-out questions with
typos, case changes and extra spaces in their instruction words, never in what they ask about.

The instruction words of a task are the words most of its questions share (its template);
the rest (numbers, the word to spell, the letters to count) is content and stays exactly as
it was, so every perturbed question keeps its gold answer. Reordering clauses is not
attempted: no generic rule keeps the meaning of every task's sentences.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Sequence

from pdclm.data.tasks import Item

_WORD = re.compile(r"[A-Za-z]{3,}")


def template_words(questions: Sequence[str], share: float = 0.5) -> set[str]:
    """Words found in at least ``share`` of the questions: the task's instructions."""
    counts = Counter(w for q in questions for w in set(_WORD.findall(q)))
    return {w for w, n in counts.items() if n >= share * len(questions)}


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)  # keep the first letter (how people still read it)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _case(word: str, rng: random.Random) -> str:
    return word.upper() if rng.random() < 0.5 else word.swapcase()


def perturb(question: str, template: set[str], rng: random.Random, rate: float = 0.3) -> str:
    """Each instruction word is changed with probability ``rate`` (at least one per question):
    a typo (two inner letters swapped), a case change, or a doubled space after it."""
    spans = [m for m in _WORD.finditer(question) if m.group() in template]
    if not spans:
        return question.replace(" ", "  ", 1)
    chosen = [m for m in spans if rng.random() < rate] or [rng.choice(spans)]
    out, last = [], 0
    for m in chosen:
        word = m.group()
        kind = rng.choice(("typo", "case", "space"))
        if kind == "typo" and len(word) >= 4:
            new = _typo(word, rng)
        elif kind == "space":
            new = word + " "
        else:
            new = _case(word, rng)
        out += [question[last : m.start()], new]
        last = m.end()
    return "".join(out) + question[last:]


def perturbed_sets(sets: dict[str, list[Item]], seed: int) -> dict[str, list[Item]]:
    """The same items with perturbed wording (answers and verifiers unchanged)."""
    out = {}
    for name, items in sets.items():
        rng = random.Random(f"{seed}:{name}")
        template = template_words([it.question for it in items])
        out[name] = [
            dataclasses.replace(it, question=perturb(it.question, template, rng)) for it in items
        ]
    return out
