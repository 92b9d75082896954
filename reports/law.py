"""Scaling-law analysis: (training compute, quality) points of a model family and their fits.

``recscale scaling-law`` trains every size on the same data and calls ``analyze``; the result goes into
``scaling_law.json`` (and ``benchmarks/results/scaling_law.json`` for the shipped family). The x axis
is training FLOPs per example (forward + backward, analytic: what the Wukong paper's Table 5 reports)
in MFLOP; y is a final validation metric (``logloss`` by default; ``ne``, ``auc`` also work).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recscale.reports.fits import LogLinearFit, PowerLawFit, fit_log_linear, fit_power_law
from recscale.reports.rundata import RunData

METRICS = ("logloss", "ne", "auc")


def points(runs: list[RunData], labels: list[str], metric: str) -> list[dict[str, Any]]:
    """One point per run: label, MFLOP per example (train and forward), the metric and the others.

    Raises:
        ValueError: an unknown metric, or a run without it.
    """
    if metric not in METRICS:
        raise ValueError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    out = []
    for run, label in zip(runs, labels):
        final = run.final_eval
        if metric not in final:
            raise ValueError(f"{run.path}: its final evaluation has no {metric!r}")
        flops = run.summary.get("flops_per_example", {})
        out.append(
            {
                "label": label,
                "run_dir": str(run.path),
                "mflop_train": float(flops.get("train", 0.0)) / 1e6,
                "mflop_forward": float(flops.get("forward", 0.0)) / 1e6,
                "dense_parameters": run.summary.get("dense_parameters"),
                "y": float(final[metric]),
                **{m: final.get(m) for m in METRICS},
                "oracle_auc": final.get("oracle_auc"),
                "oracle_logloss": final.get("oracle_logloss"),
                "examples_per_s": run.examples_per_s,
                "steps": run.summary.get("steps"),
            }
        )
    return sorted(out, key=lambda p: p["mflop_train"])


def fit(pts: list[dict[str, Any]], bootstrap: int = 500) -> tuple[PowerLawFit | None, LogLinearFit | None]:
    """Power-law and log-linear fits of y against MFLOP (None where there are too few points)."""
    x = np.array([p["mflop_train"] for p in pts])
    y = np.array([p["y"] for p in pts])
    power = fit_power_law(x, y, bootstrap=bootstrap) if len(pts) >= 3 else None
    loglin = fit_log_linear(x, y) if len(pts) >= 2 else None
    return power, loglin


def analyze(runs: list[RunData], labels: list[str], metric: str = "logloss", bootstrap: int = 500) -> dict[str, Any]:
    """Points and fits, as the JSON that ``scaling_law.json`` stores."""
    pts = points(runs, labels, metric)
    power, loglin = fit(pts, bootstrap)
    span = max(p["mflop_train"] for p in pts) / min(p["mflop_train"] for p in pts) if pts else 0.0
    return {
        "metric": metric,
        "x": "training MFLOP per example (forward + backward, analytic)",
        "points": pts,
        "compute_span": span,
        "power_law": power.to_json() if power is not None else None,
        "log_linear": loglin.to_json() if loglin is not None else None,
        "notes": [
            f"{len(pts)} models, compute spans {span:.1f}x",
            "one training run per size (one seed): the band shows the fit's uncertainty from these points, "
            "not run-to-run noise",
        ],
    }
