"""The few statistics that make an accuracy mean something at the item counts we have.

A held-out set here has tens of items per task and a handful right, so every accuracy needs
its interval, a comparison of two conditions needs a test, and a claim needs to know how many
items it would take to see the effect it states. Exact binomial tails (sums of log-space
terms) are used where counts are small; ``statistics.NormalDist`` gives the normal quantiles.
No dependency beyond the standard library: scipy is not one of the package's.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

ALPHA = 0.05
POWER = 0.8


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % (z = 1.96) Wilson score interval of an accuracy measured on ``n`` items: at the
    few dozen items a task gets, it stays inside [0, 1] and is not zero-width at 0 or 1, as the
    normal approximation is. ``(0, 1)`` when there are no items."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n))
    return max(0.0, min(accuracy, centre - half)), min(1.0, max(accuracy, centre + half))


def proportion(right: int, n: int) -> dict[str, Any]:
    """An accuracy as a report carries it: the count behind it and its 95 % interval."""
    acc = right / n if n else 0.0
    lo, hi = wilson_interval(acc, n)
    return {"right": right, "n": n, "accuracy": acc, "ci95": [lo, hi]}


# ------------------------------------------------------------------------ binomial tails
def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed term by term (fine up to a few thousand)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k, n + 1)))


def _solve(f: Any, target: float, increasing: bool) -> float:
    """The p in [0, 1] where a monotone tail probability ``f(p)`` reaches ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion: the one an exact test
    agrees with (it excludes p0 exactly when the equal-tailed exact test rejects p0)."""
    if n <= 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else _solve(lambda p: binom_sf(k, n, p), alpha / 2, increasing=True)
    hi = 1.0 if k == n else _solve(lambda p: binom_cdf(k, n, p), alpha / 2, increasing=False)
    return lo, hi


# -------------------------------------------------------------------------- comparisons
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar (sign) test on the discordant pairs: ``b`` items only the
    first condition got right, ``c`` only the second. Items both got right or both wrong say
    nothing about which is better, so only b + c count."""
    d = b + c
    if d == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf(min(b, c), d, 0.5))


def mcnemar_one_sided(b: int, c: int) -> float:
    """Exact one-sided McNemar (sign) test that the first condition is better: the chance of
    ``b`` or more of the ``b + c`` discordant items going its way if neither is better."""
    return binom_sf(b, b + c, 0.5) if b + c else 1.0


def _finite(x: float) -> float | None:
    """JSON has no infinity: an unbounded end of an interval is written ``None``."""
    return x if math.isfinite(x) else None


def paired(both: int, only_a: int, only_b: int, neither: int) -> dict[str, Any]:
    """Conditions A and B scored on the same items: accuracies with intervals, the exact
    McNemar p-value, and A's relative change over B (acc_A / acc_B - 1) with a 95 % interval.

    The interval holds the concordant count fixed and maps the exact interval of the share of
    discordant pairs won by A, pi, through (both + d pi) / (both + d (1 - pi)) - 1 (d the
    discordant count); it excludes 0 exactly when the McNemar test rejects. With no discordant
    pair it spans the discordant count 0 of ``n`` still allows (the upper end of its exact
    interval, for either side). ``None`` for an end that is unbounded (B got nothing right)."""
    n = both + only_a + only_b + neither
    d = only_a + only_b
    right_a, right_b = both + only_a, both + only_b
    lo_pi, hi_pi = clopper_pearson(only_a, d)

    def change(pi: float) -> float:
        num, den = both + d * pi, both + d * (1 - pi)
        return num / den - 1 if den > 0 else (math.inf if num > 0 else math.nan)

    rel = right_a / right_b - 1 if right_b else (math.inf if right_a else math.nan)
    if d:
        lo, hi = change(lo_pi), change(hi_pi)
    else:  # no item told them apart: the interval is how far the unseen discordant share
        # could go (0 of n seen), not the point 0 a conditional interval would give
        reach = clopper_pearson(0, n)[1] * n if n else 0.0
        lo = (right_a - reach) / right_b - 1 if right_b else math.nan
        hi = (right_a + reach) / right_b - 1 if right_b else math.inf
    return {
        "n": n,
        "a": proportion(right_a, n),
        "b": proportion(right_b, n),
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": neither,
        "discordance": d / n if n else 0.0,
        "p_value": mcnemar_exact(only_a, only_b),
        "relative_change": _finite(rel),
        "relative_ci95": [
            None if math.isnan(lo) else _finite(lo),
            None if math.isnan(hi) else _finite(hi),
        ],
        "test": "exact McNemar",
    }


def paired_from_flags(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """:func:`paired` from per-item correctness of the two conditions."""
    pairs = list(zip(a, b, strict=True))
    return paired(
        sum(x and y for x, y in pairs),
        sum(x and not y for x, y in pairs),
        sum(y and not x for x, y in pairs),
        sum(not x and not y for x, y in pairs),
    )


def fisher_exact(right_a: int, n_a: int, right_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value of two accuracies on different items: the probability,
    with the margins fixed, of a table no more likely than the one seen."""
    total, right = n_a + n_b, right_a + right_b

    def log_p(x: int) -> float:
        return (
            math.lgamma(n_a + 1)
            - math.lgamma(x + 1)
            - math.lgamma(n_a - x + 1)
            + math.lgamma(n_b + 1)
            - math.lgamma(right - x + 1)
            - math.lgamma(n_b - right + x + 1)
            - math.lgamma(total + 1)
            + math.lgamma(right + 1)
            + math.lgamma(total - right + 1)
        )

    seen = log_p(right_a)
    xs = range(max(0, right - n_b), min(right, n_a) + 1)
    return min(1.0, sum(math.exp(v) for x in xs if (v := log_p(x)) <= seen + 1e-7))


def unpaired(right_a: int, n_a: int, right_b: int, n_b: int) -> dict[str, Any]:
    """Conditions A and B scored on different items (or on the same items when the pairing
    was not recorded: then conservative, as pairing removes item-to-item variation).
    Accuracies with intervals, Fisher's exact p-value, and A's relative change over B with
    the Katz log interval (half an item added to every cell when one is empty)."""
    pa, pb = (right_a / n_a if n_a else 0.0), (right_b / n_b if n_b else 0.0)
    rel = pa / pb - 1 if pb else (math.inf if pa else math.nan)
    lo = hi = math.nan
    if n_a and n_b:
        fix = 0.5 if 0 in (right_a, right_b, n_a - right_a, n_b - right_b) else 0.0
        xa, xb, na, nb = right_a + fix, right_b + fix, n_a + 2 * fix, n_b + 2 * fix
        log_rr = math.log((xa / na) / (xb / nb))
        se = math.sqrt(1 / xa - 1 / na + 1 / xb - 1 / nb)
        z = NormalDist().inv_cdf(1 - ALPHA / 2)
        lo, hi = math.exp(log_rr - z * se) - 1, math.exp(log_rr + z * se) - 1
    return {
        "n_a": n_a,
        "n_b": n_b,
        "a": proportion(right_a, n_a),
        "b": proportion(right_b, n_b),
        "p_value": fisher_exact(right_a, n_a, right_b, n_b),
        "relative_change": None if math.isnan(rel) else _finite(rel),
        "relative_ci95": [None if math.isnan(lo) else lo, None if math.isnan(hi) else hi],
        "test": "Fisher exact",
    }


# --------------------------------------------------------------------------- sample size
def paired_items_needed(
    base_rate: float,
    relative_change: float,
    discordance: float | None = None,
    alpha: float = ALPHA,
    power: float = POWER,
) -> int | None:
    """Items a paired comparison needs so that a two-sided McNemar test at ``alpha`` detects,
    with probability ``power``, condition A scoring ``base_rate * (1 + relative_change)``
    where condition B scores ``base_rate`` (Connor 1987):

        n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2

    with delta = base_rate * relative_change and psi the share of discordant items: the
    observed one when given (raised to |delta|, the least any such change needs), else the
    share two independent conditions would have. ``None`` when the change is undefined (no
    base rate, no change) or impossible (above an accuracy of 1)."""
    target = base_rate * (1 + relative_change)
    delta = base_rate * relative_change
    if base_rate <= 0 or delta == 0 or not 0 <= target <= 1:
        return None
    if discordance is None:
        discordance = base_rate * (1 - target) + target * (1 - base_rate)
    psi = max(discordance, abs(delta))
    normal = NormalDist()
    za, zb = normal.inv_cdf(1 - alpha / 2), normal.inv_cdf(power)
    n = (za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - delta * delta))) ** 2 / delta**2
    return math.ceil(n - 1e-9)
