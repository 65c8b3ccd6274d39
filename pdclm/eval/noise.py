"""Character noise at a stated rate: typos, case flips, doubled spaces, dropped bytes.

``rate`` is the share of the text's bytes the noise touches: ``round(rate * n)`` bytes are
flipped in case, dropped, or followed by an inserted space, and a typo (two neighbouring
letters swapped) touches two bytes, so ``round(rate * n / 2)`` swaps. Positions are drawn
without replacement from the eligible ones (letters for case flips and typos, spaces for
doubling, any byte for drops); when there are too few, all eligible ones are used. An
optional ``allowed`` mask restricts the noise to some bytes (the instruction words of a
question, so that its answer stays the same).
"""

from __future__ import annotations

import random

import numpy as np

KINDS = ("typo", "case", "space", "drop")
MIXED = "mixed"
"""Each touched byte gets one of the four kinds, chosen at random."""


def _letters(a: np.ndarray) -> np.ndarray:
    return ((a >= 65) & (a <= 90)) | ((a >= 97) & (a <= 122))


def _positions(eligible: np.ndarray, k: int, rng: random.Random) -> np.ndarray:
    idx = np.flatnonzero(eligible)
    k = min(k, len(idx))
    return np.sort(np.asarray(rng.sample(idx.tolist(), k), dtype=np.int64))


def add_noise(
    data: bytes,
    rate: float,
    kind: str,
    rng: random.Random,
    allowed: np.ndarray | None = None,
) -> bytes:
    """``data`` with ``kind`` noise (one of :data:`KINDS` or ``mixed``) at ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1]; got {rate}")
    if kind not in (*KINDS, MIXED):
        raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join((*KINDS, MIXED))})")
    a = np.frombuffer(data, dtype=np.uint8).copy()
    n = len(a)
    ok = np.ones(n, dtype=bool) if allowed is None else allowed.astype(bool)
    if rate == 0 or n == 0:
        return data
    if kind == MIXED:
        # split the budget over the kinds, then apply them one after another on disjoint bytes
        shares = [rng.choice(KINDS) for _ in range(round(rate * n))]
        out = a
        for k in KINDS:
            count = shares.count(k)
            if count:
                out, ok = _apply(out, k, count, ok, rng)
        return out.tobytes()
    count = round(rate * n)
    return _apply(a, kind, count, ok, rng)[0].tobytes()


def _apply(
    a: np.ndarray, kind: str, count: int, ok: np.ndarray, rng: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` touched bytes of ``kind``; returns the new bytes and which may still be
    touched (each byte is touched at most once)."""
    letters = _letters(a)
    if kind == "case":
        pos = _positions(letters & ok, count, rng)
        a = a.copy()
        a[pos] ^= 0x20
        ok = ok.copy()
        ok[pos] = False
        return a, ok
    if kind == "typo":
        # swap a letter with the next, different letter: both bytes change
        pair = letters[:-1] & letters[1:] & ok[:-1] & ok[1:] & (a[:-1] != a[1:])
        chosen: list[int] = []
        free = pair.copy()
        for i in rng.sample(np.flatnonzero(pair).tolist(), int(pair.sum())):
            if len(chosen) * 2 >= count:
                break
            if free[i]:
                chosen.append(i)
                free[max(0, i - 1) : i + 2] = False
        a, ok = a.copy(), ok.copy()
        for i in chosen:
            a[i], a[i + 1] = a[i + 1], a[i]
            ok[i : i + 2] = False
        return a, ok
    if kind == "space":
        pos = _positions((a == 32) & ok, count, rng)
        return np.insert(a, pos + 1, 32), np.insert(ok, pos + 1, False)
    pos = _positions(ok, count, rng)  # drop
    keep = np.ones(len(a), dtype=bool)
    keep[pos] = False
    return a[keep], ok[keep]


def noisy_symbols(
    symbols: np.ndarray, rate: float, kind: str, rng: random.Random, length: int
) -> np.ndarray:
    """A symbol window with noise in its byte runs (control symbols untouched), cut or
    padded by repetition of its end to ``length``."""
    cuts = np.flatnonzero(symbols >= 256)
    parts, last = [], 0
    for c in [*cuts.tolist(), len(symbols)]:
        run = symbols[last:c].astype(np.uint8).tobytes()
        parts.append(np.frombuffer(add_noise(run, rate, kind, rng), dtype=np.uint8))
        if c < len(symbols):
            parts.append(symbols[c : c + 1])
        last = c + 1
    out = np.concatenate([p.astype(np.int64) for p in parts])
    if len(out) < length:
        raise ValueError(f"window of {len(out)} symbols after noise; need {length}")
    return out[:length]
