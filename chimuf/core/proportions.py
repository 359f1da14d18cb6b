"""Intervals of a proportion and of the difference of two, from counts alone (standard library).

An accuracy is a proportion: k images right out of n. How far it could move with another sample
of the same size decides whether a number, or the difference of two, says anything. These are
the closed-form score intervals the literature recommends for small n (they stay inside [0, 1]
and keep their coverage where the textbook "p ± z·SE" does not):

* Wilson's score interval of one proportion (Wilson 1927);
* Newcombe's hybrid score interval of the difference of two independent proportions, built from
  the two Wilson intervals (Newcombe 1998, method 10), and the p value that interval implies;
* Holm's step-down adjustment of a family of p values (Holm 1979), so that "distinguishable"
  said of several comparisons at once keeps its error rate at 1 − confidence.

Plain arithmetic on counts, no numpy, so the split (chimuf.data) can flag a split that is too
small right after making it, and the evaluation (chimuf.stats.evidence) can weigh differences, with
one definition of each interval.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from chimuf.core.results import Interval


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile of `confidence` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def alpha_of(confidence: float) -> float:
    """The significance level every verdict is decided at: 1 − confidence, rounded so that
    1 − 0.95 is 0.05 and not 0.050000000000000044."""
    return round(1 - confidence, 10)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson's score interval of the proportion k / n; [0, 1] when n is 0 (nothing is known)."""
    return wilson_at(k, n, z_value(confidence))


def wilson_at(k: int, n: int, z: float) -> Interval:
    """Wilson's interval at the normal quantile z (wilson_interval names it by confidence)."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def worst_case_half_width(n: int, confidence: float = 0.95) -> float:
    """Half the width of the Wilson interval of an accuracy measured on n images, at its widest
    (accuracy 0.5): z / (2·√(n + z²)). What a split of n images can resolve at best."""
    z = z_value(confidence)
    return z / (2 * math.sqrt(max(n, 0) + z * z))


def images_for_half_width(half_width: float, confidence: float = 0.95) -> int:
    """The fewest images whose worst-case Wilson half-width is at most `half_width`."""
    z = z_value(confidence)
    return max(1, math.ceil((z / (2 * half_width)) ** 2 - z * z))


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval of k1/n1 − k2/n2, two independent proportions.

    Used for accuracies measured on the same images too (two models on one validation split):
    there it ignores that the two are paired, which makes it wider (conservative) when the models
    agree on most images, never narrower.
    """
    return newcombe_at(k1, n1, k2, n2, z_value(confidence))


def newcombe_at(k1: int, n1: int, k2: int, n2: int, z: float) -> Interval:
    """Newcombe's interval at the normal quantile z."""
    p1, p2 = (k1 / n1 if n1 else 0.5), (k2 / n2 if n2 else 0.5)
    first, second = wilson_at(k1, n1, z), wilson_at(k2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - first.low) ** 2 + (second.high - p2) ** 2)
    high = difference + math.sqrt((first.high - p1) ** 2 + (p2 - second.low) ** 2)
    return Interval(max(-1.0, low), min(1.0, high))


def excludes_zero(interval: Interval) -> bool:
    """True when the interval of a difference lies wholly on one side of zero."""
    return interval.low > 0 or interval.high < 0


# Past this quantile the two-sided normal tail is below 1e-300: the p value is 0 in floating point.
Z_MAX = 37.5


def newcombe_p_value(k1: int, n1: int, k2: int, n2: int) -> float:
    """The p value Newcombe's interval implies: the 1 − confidence at which the interval of
    k1/n1 − k2/n2 just reaches zero (found by bisection on z; the interval widens with z).

    So "the interval at `confidence` excludes zero" and "p < 1 − confidence" are one verdict,
    and a family of interval comparisons can be adjusted like one of tests (`holm`)."""
    if not excludes_zero(newcombe_at(k1, n1, k2, n2, 1e-9)):
        return 1.0  # no difference at all
    if excludes_zero(newcombe_at(k1, n1, k2, n2, Z_MAX)):
        return 0.0
    low, high = 0.0, Z_MAX  # excludes zero at `low`, reaches it at `high`
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if excludes_zero(newcombe_at(k1, n1, k2, n2, middle)) else (low, middle)
    return min(1.0, 2 * NormalDist().cdf(-high))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given.

    The i-th smallest of m p values is multiplied by m − i + 1 (i from 1), then made
    non-decreasing along that order and capped at 1. Deciding "p_adjusted < alpha" keeps the
    chance of any false "distinguishable" in the family at most alpha, without Bonferroni's cost
    for the comparisons after the first."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
