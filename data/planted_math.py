"""Small numeric pieces of the planted model: Zipf ids, their spread over a table, the logistic, the bias solve."""

from __future__ import annotations

import math

import numpy as np


def zipf_ranks(u: np.ndarray, num_ids: int, exponent: float) -> np.ndarray:
    """Inverse CDF of a continuous Zipf (bounded Pareto) law on ``[1, num_ids + 1)``, floored to ``[0, num_ids)``."""
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * math.log(num_ids + 1.0))
    else:
        a = 1.0 - exponent
        x = (1.0 + u * ((num_ids + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.minimum(np.floor(x).astype(np.int64) - 1, num_ids - 1)


def scatter(ranks: np.ndarray, num_ids: int, salt: int) -> np.ndarray:
    """A bijection of ``[0, num_ids)`` (affine mod num_ids), so popular ids are spread over the table."""
    if num_ids >= 1 << 32:
        return (ranks + salt) % num_ids
    a = 2_654_435_761 % num_ids or 1
    while math.gcd(a, num_ids) != 1:
        a += 1
    return (ranks * a + salt % num_ids) % num_ids


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function (float64)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def solve_bias(logits: np.ndarray, rate: float) -> float:
    """The b with ``mean(sigmoid(logits + b)) == rate`` (bisection; the mean is increasing in b)."""
    lo, hi = -40.0, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if sigmoid(logits + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
