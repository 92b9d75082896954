"""Scaling efficiency of a sweep (the same preset at several world sizes), from the runs' summaries.

Computed here and only here, so every report and sweep agrees. With N0 the smallest world size of the sweep
and X(N) the steady-state global throughput (examples/s):

* weak scaling (fixed per-rank batch): ``E_weak(N) = (X(N) / N) / (X(N0) / N0)``, per-rank throughput
  relative to the baseline;
* strong scaling (fixed global batch): ``speedup(N) = X(N) / X(N0)`` (the same work in less time) and
  ``E_strong(N) = speedup(N) x N0 / N``.

The two formulas are the same ratio; what differs is the experiment (which batch is held fixed),
which the sweep records. "Where the time goes" uses the trainer's phase timers (exact on CPU).
"""

from __future__ import annotations

from typing import Any

from recscale.reports.rundata import RunData, time_split

TIME_CATEGORIES = (
    ("data", "data loading"),
    ("input_dist", "embedding input all-to-all"),
    ("compute", "forward + backward (lookups, output all-to-all, dense compute, gradient all-reduce)"),
    ("moe_dispatch_fwd", "MoE dispatch all-to-all (forward)"),
    ("optimizer", "optimizer"),
    ("idle", "idle (step time no phase timer saw)"),
)
"""How a step's time is reported: the trainer's phases, with forward + backward merged (TorchRec's
pipeline runs the embedding lookups and output all-to-all inside forward, and DDP overlaps the gradient
all-reduce with backward, so neither can be split off by wall-clock phase timers), and the MoE
dispatch measured inside forward (DeepSpeed's timers) taken out of it when present."""

SHORT_NAMES = {
    "data": "data",
    "input_dist": "embedding input all-to-all",
    "compute": "forward + backward",
    "moe_dispatch_fwd": "MoE dispatch (fwd)",
    "optimizer": "optimizer",
    "idle": "idle",
}
"""Legend labels of the charts (the tables carry the long ones)."""


def step_breakdown(run: RunData) -> dict[str, float]:
    """Milliseconds per step in each of ``TIME_CATEGORIES`` (steady windows)."""
    split = time_split(run)
    if not split:
        return {}
    moe = split.get("moe_dispatch_fwd", 0.0)
    out = {
        "data": split["data"],
        "input_dist": split["input_dist"],
        "compute": max(0.0, split["forward"] - moe) + split["backward"],
        "moe_dispatch_fwd": moe,
        "optimizer": split["optimizer"],
        "idle": split["idle"],
    }
    return {k: 1e3 * v for k, v in out.items()}


def efficiency_table(runs: list[RunData], mode: str) -> list[dict[str, Any]]:
    """One row per world size: throughput, per-rank throughput, speed-up, efficiency, step breakdown.

    Args:
        runs: the sweep's runs (any order; one per world size).
        mode: ``weak`` or ``strong`` (recorded in each row; the ratio is the same).
    """
    ordered = sorted(runs, key=lambda r: r.world_size)
    if not ordered:
        return []
    base = ordered[0]
    n0, x0 = base.world_size, base.examples_per_s
    rows = []
    for run in ordered:
        n, x = run.world_size, run.examples_per_s
        speedup = x / x0 if x0 else None
        rows.append(
            {
                "run": run.name,
                "world_size": n,
                "batch_size": run.summary.get("batch_size"),
                "batch_size_per_rank": run.summary.get("batch_size_per_rank"),
                "examples_per_s": x,
                "examples_per_s_per_rank": x / n if n else None,
                "mfu": run.summary.get("mfu"),
                "speedup": speedup,
                "efficiency": speedup * n0 / n if speedup is not None else None,
                "mode": mode,
                "step_ms": step_breakdown(run),
            }
        )
    return rows


def shown_categories(splits: list[dict[str, float]]) -> list[tuple[str, str]]:
    """``TIME_CATEGORIES`` without the MoE row when no run measured a dispatch."""
    moe = any(split.get("moe_dispatch_fwd", 0.0) > 0 for split in splits)
    return [(k, label) for k, label in TIME_CATEGORIES if k != "moe_dispatch_fwd" or moe]
