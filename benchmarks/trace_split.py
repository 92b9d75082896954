"""Where a profiled step's time goes: a ``torch.profiler`` Chrome trace split into op categories.

Used by ``torchrec_speed.py --profile`` to put recscale's step and TorchRec's side by side: matrix
multiplies, embedding kernels (FBGEMM lookup and fused update), the dense optimizer, other ops and the
time outside any op (Python, the frameworks' glue).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv", "aten::dot"}


def op_split(trace_path: Path, steps: int, step_ms: float) -> dict[str, float]:
    """Where a step's time goes, in ms per step, from a ``torch.profiler`` Chrome trace of ``steps`` steps.

    Each op's self time (its duration less its child ops') is put in one category: ``matmul``
    (``MATMUL_OPS``), ``embedding_kernels`` (FBGEMM's ops: the lookup and the fused optimizer update),
    ``dense_optimizer`` (any op under an ``Optimizer.step#...`` range that is not an FBGEMM op), ``other_ops``
    (pointwise, copies, reductions, the loss, collectives). ``outside_ops`` = the step time less all of
    them: Python and the frameworks' glue between ops.
    """
    events = json.loads(trace_path.read_text())["traceEvents"]
    by_thread: dict[tuple[Any, Any], list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"):
            by_thread[(e["pid"], e["tid"])].append(e)
    totals: dict[str, float] = defaultdict(float)
    for thread in by_thread.values():
        _self_times(sorted(thread, key=lambda e: (e["ts"], -e["dur"])), totals)
    split = {
        k: totals.get(k, 0.0) / 1e3 / steps for k in ("matmul", "embedding_kernels", "dense_optimizer", "other_ops")
    }
    split["outside_ops"] = max(0.0, step_ms - sum(split.values()))
    split["step"] = step_ms
    return split


def _self_times(thread: list[dict], totals: dict[str, float]) -> None:
    """Add each op's self time (µs) of one thread's events (sorted by start) to its category in ``totals``."""
    stack: list[tuple[dict, list[float], bool]] = []  # (event, [time in children], under an optimizer step)
    for e in [*thread, None]:
        until = float("inf") if e is None else e["ts"]
        while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= until:
            event, children, in_optimizer = stack.pop()
            if stack:
                stack[-1][1][0] += event["dur"]
            if event["cat"] == "cpu_op":
                totals[_category(event["name"], in_optimizer)] += event["dur"] - children[0]
        if e is not None:
            in_optimizer = (bool(stack) and stack[-1][2]) or e["name"].startswith("Optimizer.step#")
            stack.append((e, [0.0], in_optimizer))


def _category(name: str, in_optimizer: bool) -> str:
    if name in MATMUL_OPS:
        return "matmul"
    if name.startswith("fbgemm::"):
        return "embedding_kernels"
    return "dense_optimizer" if in_optimizer else "other_ops"
