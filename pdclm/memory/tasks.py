"""Memory tasks: passkey retrieval and multi-query associative recall, as symbol streams.

Both are scored by teacher-forced greedy decoding: an item counts as correct when every answer
symbol is the model's most likely next symbol given everything before it (exactly the answer
greedy generation would produce). Each builder returns the stream (``n + 1`` symbols, so it
is a training sequence of ``n``) and the positions of the answer symbols.

- *Passkey* (after Mohtashami & Jaggi, 2023, "Landmark Attention"): a random 5-digit key is
  stated once in repeated filler text at a random depth and asked for at the end. Chance of a
  whole key: 1e-5 (a model may still guess the digits' format).
- *Associative recall* (multi-query associative recall, after Arora et al., 2023, "Zoology"):
  ``pairs`` key->value lines (3 random letters -> 2 digits), filler, then every key asked
  again in a random order; chance per query: 1e-2.
"""

from __future__ import annotations

import numpy as np

from pdclm.vocab import BOS

FILLER = (
    b"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
)


def _filler(n: int, offset: int = 0) -> bytes:
    reps = FILLER * (2 + (n + offset) // len(FILLER))
    return reps[offset : offset + n]


def passkey(
    rng: np.random.Generator, n: int, depth: float | None = None, digits: int = 5
) -> tuple[list[int], list[int]]:
    """A passkey stream of ``n + 1`` symbols; ``depth`` in [0, 1] places the key (random if
    None); the key has ``digits`` random digits."""
    key = "".join(str(d) for d in rng.integers(0, 10, digits))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key.\n".encode()
    ask = b"\nWhat is the pass key? The pass key is "
    tail = ask + key.encode() + b".\n"
    room = n + 1 - 1 - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"a passkey item needs at least {n + 1 - room} symbols; got {n + 1}")
    depth = float(rng.random()) if depth is None else depth
    # the key goes at a sentence boundary of the filler near the asked depth
    before = int(depth * room)
    head = _filler(before)
    dot, nl = head.rfind(b". "), head.rfind(b"\n")
    before = max(dot + 2 if dot >= 0 else 0, nl + 1)  # snap to a sentence start
    text = _filler(before) + needle + _filler(room - before, before % len(FILLER)) + tail
    stream = [BOS, *text]
    first = len(stream) - 2 - len(key)
    return stream, list(range(first, first + len(key)))


def assoc_recall(
    rng: np.random.Generator, n: int, pairs: int = 8, gap: float | None = None
) -> tuple[list[int], list[int]]:
    """``pairs`` key:value lines, filler, then every key asked (``key?value``); ``n + 1``
    symbols. ``gap`` in [0, 1] is the filler's share of the room (random if None)."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    keys: list[bytes] = []
    while len(keys) < pairs:
        k = bytes(rng.choice(letters, 3))
        if k not in keys:
            keys.append(k)
    vals = [b"%02d" % v for v in rng.integers(0, 100, pairs)]
    facts = b"".join(k + b":" + v + b"\n" for k, v in zip(keys, vals, strict=True))
    order = rng.permutation(pairs)
    asks = [keys[i] + b"?" + vals[i] + b"\n" for i in order]
    room = n - 1 - len(facts) - sum(map(len, asks))
    if room < 0:
        raise ValueError(f"{pairs} pairs need more than {n + 1} symbols")
    gap = float(rng.random()) if gap is None else gap
    fill = int(gap * room)
    text = facts + _filler(fill) + b"\n" + b"".join(asks) + _filler(room - fill)
    stream = [BOS, *text]
    answers, at = [], 2 + len(facts) + fill
    for a in asks:
        answers += [at + 4, at + 5]
        at += len(a)
    return stream, answers


def greedy_hits(logits, stream, answers: list[int]) -> list[bool]:
    """Per answer symbol: is it the argmax prediction? ``logits`` (N, V) predicts
    ``stream[1:]``."""
    pred = logits[[a - 1 for a in answers]].argmax(-1).tolist()
    return [p == stream[a] for p, a in zip(pred, answers, strict=True)]


def whole_items(hits: list[bool], group: int) -> list[bool]:
    """Per item of ``group`` consecutive answer symbols: all of them right."""
    return [all(hits[i : i + group]) for i in range(0, len(hits), group)]


def greedy_correct(logits, stream, answers: list[int], group: int) -> list[bool]:
    """Per item of ``group`` answer symbols: all predicted (argmax) right."""
    return whole_items(greedy_hits(logits, stream, answers), group)
