"""Verdicts of the quality benchmarks from a few seeds: Student-t intervals, never "two standard errors".

A benchmark trains each model on a handful of seeds (3 or 5). The mean of n values has n - 1 degrees of
freedom in its spread, so its 95% interval is ``mean +- t(0.975, n - 1) * s / sqrt(n)``: with 3 seeds the
factor is 4.30, not 2 (two standard errors would claim about 82% confidence at n = 3, not 95%). With one
seed there is no interval and no verdict can be confirmed.

A verdict against a target is ``met`` when the whole interval is on the target's good side, ``not_met``
when the whole interval is on its bad side, else ``unresolved`` (the seeds cannot tell).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy.stats import t as student_t

CONFIDENCE = 0.95


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample std, standard error and the Student-t interval of ``values``' mean.

    ``low`` / ``high`` / ``t_quantile`` are None for fewer than two values.
    """
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "stdev": None, "stderr": None, "t_quantile": None, "low": None, "high": None}
    stdev = statistics.stdev(values)
    stderr = stdev / math.sqrt(n)
    quantile = float(student_t.ppf(0.5 + confidence / 2, df=n - 1))
    return {
        "n": n,
        "mean": mean,
        "stdev": stdev,
        "stderr": stderr,
        "confidence": confidence,
        "t_quantile": quantile,
        "low": mean - quantile * stderr,
        "high": mean + quantile * stderr,
    }


def at_least(interval: dict[str, Any], target: float) -> str:
    """``met`` / ``not_met`` / ``unresolved`` for "the true mean is at least ``target``"."""
    if interval["low"] is None:
        return "unresolved"
    if interval["low"] >= target:
        return "met"
    if interval["high"] < target:
        return "not_met"
    return "unresolved"


def at_most(interval: dict[str, Any], limit: float) -> str:
    """``met`` / ``not_met`` / ``unresolved`` for "the true mean is at most ``limit``"."""
    if interval["low"] is None:
        return "unresolved"
    if interval["high"] <= limit:
        return "met"
    if interval["low"] > limit:
        return "not_met"
    return "unresolved"
