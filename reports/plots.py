"""The report's charts: matplotlib (Agg backend, no display), each returned as PNG bytes.

Every function takes plain data (lists, dicts read from run directories) and returns one PNG, so the
HTML page can inline it as a data URI and the Markdown twin can write it beside the page.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
PHASE_COLORS = {
    "data": "#8c8c8c",
    "input_dist": "#ff7f0e",
    "compute": "#1f77b4",
    "moe_dispatch_fwd": "#9467bd",
    "optimizer": "#2ca02c",
    "idle": "#d9d9d9",
}
Series = tuple[str, Sequence[float], Sequence[float]]
"""(label, x values, y values)."""


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def line_panels(panels: list[tuple[str, str, list[Series]]], xlabel: str = "step") -> bytes:
    """Side-by-side line charts: each panel is (title, y label, series)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        for i, (label, xs, ys) in enumerate(series):
            pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if not pairs:
                continue
            px, py = zip(*pairs)
            ax.plot(px, py, marker="o" if len(px) < 30 else None, ms=3, color=COLORS[i % len(COLORS)], label=label)
        _style(ax, title, xlabel, ylabel)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return _png(fig)


def stacked_bars(labels: list[str], parts: list[dict[str, float]], names: dict[str, str], unit: str) -> bytes:
    """One horizontal stacked bar per label (e.g. ms per step by phase, per world size)."""
    fig, ax = plt.subplots(figsize=(9.5, 1.9 + 0.45 * len(labels)), layout="constrained")
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for key, legend in names.items():
        values = np.array([p.get(key, 0.0) for p in parts])
        if not values.any():
            continue
        ax.barh(y, values, left=left, color=PHASE_COLORS.get(key), label=legend, height=0.55)
        left += values
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    _style(ax, "where the time goes (per step)", unit, "")
    fig.legend(fontsize=8, loc="outside lower center", ncol=3)
    return _png(fig)


def module_bars(rows: list[dict[str, Any]], other_ms: float) -> bytes:
    """Per-module forward/backward ms per step, MFU written on each bar."""
    names = [r["module"] for r in rows] + ["other"]
    fwd = np.array([r["forward_ms"] for r in rows] + [0.0])
    bwd = np.array([r["backward_ms"] for r in rows] + [0.0])
    oth = np.array([0.0] * len(rows) + [other_ms])
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(names) + 3), 3.8), layout="constrained")
    x = np.arange(len(names))
    ax.bar(x, fwd, color="#1f77b4", label="forward", width=0.6)
    ax.bar(x, bwd, bottom=fwd, color="#aec7e8", label="backward", width=0.6)
    ax.bar(x, oth, color="#d9d9d9", label="outside the modules", width=0.6)
    for i, r in enumerate(rows):
        if r.get("mfu") is not None:
            ax.text(i, fwd[i] + bwd[i], f"{100 * r['mfu']:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    _style(ax, "time per step by module (MFU on top)", "", "ms per step")
    ax.legend(fontsize=8)
    return _png(fig)


def flops_bars(breakdown: dict[str, dict[str, float]]) -> bytes:
    """Training FLOPs per example by part of the dense arch."""
    names = list(breakdown)
    values = np.array([breakdown[k]["train"] / 1e6 for k in names])
    fig, ax = plt.subplots(figsize=(max(5.5, 0.5 * len(names) + 3), 3.6), layout="constrained")
    ax.bar(np.arange(len(names)), values, color="#1f77b4", width=0.6)
    ax.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize=8)
    _style(ax, "training FLOPs per example by part", "", "MFLOP / example")
    return _png(fig)


def memory_bars(bytes_per_rank: list[int]) -> bytes:
    """Embedding memory per rank of the sharding plan."""
    mib = np.array(bytes_per_rank, dtype=float) / 2**20
    fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(mib) + 3), 3.4), layout="constrained")
    ax.bar(np.arange(len(mib)), mib, color="#2ca02c", width=0.6)
    ax.set_xticks(np.arange(len(mib)))
    _style(ax, "embedding weights + optimizer state per rank", "rank", "MiB")
    return _png(fig)


def efficiency_panels(world_sizes: list[int], throughput: list[float], efficiency: list[float], mode: str) -> bytes:
    """Throughput (with the ideal line) and scaling efficiency against the world size."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.4, 3.6), layout="constrained")
    n0, x0 = world_sizes[0], throughput[0]
    a1.plot(world_sizes, throughput, marker="o", color=COLORS[0], label="measured")
    a1.plot(world_sizes, [x0 * n / n0 for n in world_sizes], ls="--", color="#7f7f7f", label="ideal")
    _style(a1, "throughput", "ranks", "examples/s")
    a1.legend(fontsize=8)
    a2.plot(world_sizes, [100 * e for e in efficiency], marker="o", color=COLORS[1])
    a2.axhline(100, ls="--", color="#7f7f7f")
    a2.set_ylim(0, max(110, 105 * max(efficiency)))
    _style(a2, f"{mode} scaling efficiency", "ranks", "% of ideal")
    for a in (a1, a2):
        a.set_xticks(world_sizes)
    return _png(fig)


def projection_panels(rows: list[dict[str, Any]]) -> bytes:
    """Projected throughput, step time split and efficiency against the world size (log x)."""
    n = [r["world_size"] for r in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.7), layout="constrained")
    a1.loglog(n, [r["examples_per_s"] for r in rows], marker="o", color=COLORS[0], label="projected")
    a1.loglog(n, [rows[0]["examples_per_s"] * k / n[0] for k in n], ls="--", color="#7f7f7f", label="ideal")
    _style(a1, "projected throughput", "ranks", "examples/s")
    a1.legend(fontsize=8)
    bottom = np.zeros(len(rows))
    for key, color, label in (
        ("dense_ms", "#1f77b4", "dense (measured)"),
        ("embedding_ms", "#ff7f0e", "embedding (planner)"),
        ("allreduce_ms", "#9467bd", "gradient all-reduce"),
    ):
        vals = np.array([r[key] for r in rows])
        a2.bar(np.arange(len(rows)), vals, bottom=bottom, color=color, label=label, width=0.6)
        bottom += vals
    a2.set_xticks(np.arange(len(rows)), [str(k) for k in n], fontsize=8)
    _style(a2, "projected step time", "ranks", "ms per step")
    a2.legend(fontsize=7)
    a3.semilogx(n, [100 * r["efficiency"] for r in rows], marker="o", color=COLORS[1])
    a3.axhline(100, ls="--", color="#7f7f7f")
    a3.set_ylim(0, 110)
    _style(a3, "projected efficiency", "ranks", "% of ideal")
    return _png(fig)


def scaling_law_chart(
    x: list[float],
    y: list[float],
    labels: list[str],
    metric: str,
    xunit: str,
    power: Any | None,
    loglin: Any | None,
    floor: float | None = None,
) -> bytes:
    """Quality against compute: the points, the power-law fit with its band, the log-linear fit.

    ``floor`` (the oracle's metric on synthetic data) is drawn as the best any model can reach. The y
    range follows the points, so an extrapolating curve cannot squash them.
    """
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    xs, ys = np.array(x, dtype=float), np.array(y, dtype=float)
    grid = np.geomspace(xs.min() / 1.3, xs.max() * 1.3, 200)
    spread = max(float(ys.max() - ys.min()), 1e-3 * max(abs(float(ys.mean())), 1e-9))
    lo_y, hi_y = float(ys.min()) - 1.5 * spread, float(ys.max()) + 1.5 * spread
    if floor is not None and lo_y - 2 * spread <= floor <= hi_y + 2 * spread:
        ax.axhline(floor, ls=":", color="#2ca02c", label=f"oracle (best possible): {floor:.4g}")
        lo_y, hi_y = min(lo_y, floor - 0.2 * spread), max(hi_y, floor + 0.2 * spread)
    elif floor is not None:
        ax.plot([], [], ls=":", color="#2ca02c", label=f"oracle (best possible): {floor:.4g}, off the axis")
    if power is not None and power.identified:
        lo, hi = power.band(grid)
        ax.fill_between(grid, lo, hi, color=COLORS[0], alpha=0.15, label="power law, 95% band")
        ax.plot(grid, power.predict(grid), color=COLORS[0], label=f"a + b x^c, c = {power.c:.3g}")
    if loglin is not None:
        lo, hi = loglin.band(grid)
        ax.fill_between(grid, lo, hi, color=COLORS[1], alpha=0.10)
        ax.plot(
            grid, loglin.predict(grid), ls="--", color=COLORS[1], label=f"y0 - eta ln(x/x0), eta = {loglin.eta:.3g}"
        )
    ax.scatter(xs, y, color="black", zorder=5, label="trained models")
    for xi, yi, name in zip(xs, y, labels):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_ylim(lo_y, hi_y)
    ax.set_xscale("log")
    _style(ax, f"{metric} against training compute", f"training {xunit} per example (log)", metric)
    ax.legend(fontsize=8)
    return _png(fig)
