"""Quality-versus-compute fits for scaling-law studies (numpy only).

Two forms, as in the papers (Wukong, arXiv 2403.02545; Kunlun):

* **Power law** (Wukong): ``y = a + b * x**c``, x = compute (FLOPs per example), y = a quality metric
  (logloss, NE). The paper's fit of relative logloss is ``y = -100 + 99.56 x^-0.00071`` with x in
  GFLOP/example (the paper's text prints the exponent without its minus sign; only the negative exponent
  reproduces its Table 5, -0.35 % at 0.53 GFLOP to -0.76 % at 108).
  Fitted by variable projection: for a fixed ``c`` the model is linear in ``(a, b)``, so the sum of
  squared errors is minimised over ``c`` alone (a coarse grid over both signs, then golden-section
  refinement), which is robust where ``c`` is tiny and ``a`` and ``b`` nearly cancel.
* **Log-linear** (Kunlun's "scaling efficiency"): ``y = y0 - eta * ln(x / x0)``; ``eta`` is the metric
  gained per e-fold of compute (``eta * ln 2`` per doubling). Ordinary least squares.

Confidence: the log-linear fit's parameter intervals and band come from its covariance (Student t);
the power law's from a residual bootstrap (``bootstrap`` refits, seeded), because its parameters
are far from Gaussian with few points. Both say how many points they rest on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

C_BOUND = 10.0
"""Largest exponent magnitude the power-law fit searches."""

_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95 % Student t quantiles by degrees of freedom (1.96 beyond the table)."""


def t95(dof: int) -> float:
    """Two-sided 95 % Student t quantile."""
    if dof <= 0:
        return math.inf
    return _T95.get(dof, 1.96 + 2.5 / dof)


@dataclass
class LogLinearFit:
    """``y = y0 - eta * ln(x / x0)``."""

    x0: float
    y0: float
    eta: float
    y0_ci: tuple[float, float]
    eta_ci: tuple[float, float]
    r2: float
    n: int
    _cov: np.ndarray = field(repr=False)
    _sigma2: float = field(repr=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Fitted y at ``x``."""
        return self.y0 - self.eta * np.log(np.asarray(x, dtype=float) / self.x0)

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """95 % confidence band of the fitted mean at ``x``."""
        u = np.log(np.asarray(x, dtype=float) / self.x0)
        design = np.stack([np.ones_like(u), -u], axis=1)
        se = np.sqrt(np.einsum("ij,jk,ik->i", design, self._cov, design))
        half = t95(self.n - 2) * se
        y = self.predict(x)
        return y - half, y + half

    def to_json(self) -> dict[str, Any]:
        """Plain dict (for ``scaling_law.json``)."""
        return {
            "form": "y = y0 - eta * ln(x / x0)",
            "x0": self.x0,
            "y0": self.y0,
            "eta": self.eta,
            "eta_per_doubling": self.eta * math.log(2),
            "y0_ci95": list(self.y0_ci),
            "eta_ci95": list(self.eta_ci),
            "r2": self.r2,
            "points": self.n,
        }


def fit_log_linear(x: np.ndarray, y: np.ndarray, x0: float | None = None) -> LogLinearFit:
    """Least-squares ``y = y0 - eta ln(x / x0)`` (x0 defaults to the smallest x).

    Raises:
        ValueError: fewer than 2 points or non-positive x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.any(x <= 0):
        raise ValueError("a log-linear fit needs at least 2 points with positive compute")
    x0 = float(x.min()) if x0 is None else x0
    u = np.log(x / x0)
    design = np.stack([np.ones_like(u), -u], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(x) - 2
    sigma2 = float(resid @ resid / dof) if dof > 0 else math.nan
    cov = sigma2 * np.linalg.pinv(design.T @ design)
    half = t95(dof) * np.sqrt(np.diag(cov))
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / total if total > 0 else 1.0
    y0, eta = float(coef[0]), float(coef[1])
    return LogLinearFit(
        x0, y0, eta, (y0 - half[0], y0 + half[0]), (eta - half[1], eta + half[1]), r2, len(x), cov, sigma2
    )


@dataclass
class PowerLawFit:
    """``y = a + b * x**c``."""

    a: float
    b: float
    c: float
    sse: float
    n: int
    a_ci: tuple[float, float] = (math.nan, math.nan)
    b_ci: tuple[float, float] = (math.nan, math.nan)
    c_ci: tuple[float, float] = (math.nan, math.nan)
    boot: np.ndarray | None = field(default=None, repr=False)
    """Bootstrap parameter draws ``[R, 3]`` (a, b, c)."""
    note: str = ""
    """Why the fit does not identify a power law, when it does not (then ``identified`` is false)."""

    @property
    def identified(self) -> bool:
        """More points than parameters and an exponent inside the searched range."""
        return not self.note

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Fitted y at ``x``."""
        return self.a + self.b * np.power(np.asarray(x, dtype=float), self.c)

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise 2.5-97.5 % bootstrap band of the fitted curve at ``x`` (the fit itself when no draws)."""
        x = np.asarray(x, dtype=float)
        if self.boot is None or len(self.boot) == 0:
            y = self.predict(x)
            return y, y
        curves = self.boot[:, :1] + self.boot[:, 1:2] * np.power(x[None, :], self.boot[:, 2:3])
        return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (for ``scaling_law.json``)."""
        return {
            "form": "y = a + b * x^c",
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "a_ci95": list(self.a_ci),
            "b_ci95": list(self.b_ci),
            "c_ci95": list(self.c_ci),
            "sse": self.sse,
            "points": self.n,
            "bootstrap_draws": 0 if self.boot is None else len(self.boot),
            "identified": self.identified,
            "note": self.note,
        }


def _linear_ab(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares of ``y = a + b u`` in closed form; returns (a, b, sse)."""
    du, dy = u - u.mean(), y - y.mean()
    suu, suy, syy = float(du @ du), float(du @ dy), float(dy @ dy)
    if suu <= 1e-300:  # u constant (c ~ 0): only the mean is identified
        return float(y.mean()), 0.0, syy
    b = suy / suu
    return float(y.mean() - b * u.mean()), b, max(0.0, syy - suy * b)


def _best_c(x: np.ndarray, y: np.ndarray) -> float:
    """The exponent minimising the variable-projection SSE (grid over both signs, then golden section)."""
    mags = np.logspace(-6, math.log10(C_BOUND), 57)
    grid = np.concatenate([-mags[::-1], mags])

    def sse(c: float) -> float:
        return _linear_ab(np.power(x, c), y)[2]

    values = [sse(c) for c in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if lo < 0 < hi:  # never step across c = 0, where x**c is constant
        lo, hi = (grid[i], hi) if grid[i] > 0 else (lo, grid[i])
    golden = (math.sqrt(5) - 1) / 2
    c1, c2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
    f1, f2 = sse(c1), sse(c2)
    for _ in range(80):
        if f1 < f2:
            hi, c2, f2 = c2, c1, f1
            c1 = hi - golden * (hi - lo)
            f1 = sse(c1)
        else:
            lo, c1, f1 = c1, c2, f2
            c2 = lo + golden * (hi - lo)
            f2 = sse(c2)
    return float((lo + hi) / 2)


def _fit_power(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    c = _best_c(x, y)
    a, b, sse = _linear_ab(np.power(x, c), y)
    return a, b, c, sse


def fit_power_law(x: np.ndarray, y: np.ndarray, bootstrap: int = 500, seed: int = 0) -> PowerLawFit:
    """Least-squares ``y = a + b x^c`` with residual-bootstrap 95 % intervals.

    Args:
        x: compute per point (positive; scale it so values are O(1), e.g. MFLOP or GFLOP per example).
        y: quality per point.
        bootstrap: refits on resampled residuals (0 = no intervals).
        seed: seed of the resampling.

    Raises:
        ValueError: fewer than 3 points or non-positive x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.any(x <= 0):
        raise ValueError("a power-law fit needs at least 3 points with positive compute")
    a, b, c, sse = _fit_power(x, y)
    fit = PowerLawFit(a, b, c, sse, len(x))
    if abs(c) >= 0.999 * C_BOUND:
        fit.note = (
            f"the best exponent is at the searched bound |c| = {C_BOUND:g}: these points do not follow a power law"
        )
    elif len(x) == 3:
        fit.note = "3 points for 3 parameters: the curve passes through them and has no uncertainty estimate"
    if bootstrap <= 0 or len(x) < 4:
        return fit
    rng = np.random.default_rng(seed)
    fitted = fit.predict(x)
    resid = y - fitted
    resid = resid * math.sqrt(len(x) / (len(x) - 3))  # inflate for the 3 fitted parameters
    draws = []
    for _ in range(bootstrap):
        y_star = fitted + rng.choice(resid, size=len(x), replace=True)
        draws.append(_fit_power(x, y_star)[:3])
    boot = np.array(draws)
    lo, hi = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    fit.a_ci, fit.b_ci, fit.c_ci = (lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])
    fit.boot = boot
    return fit
