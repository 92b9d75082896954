"""``--profile``: a ``torch.profiler`` trace of a few steps and a per-module time + MFU table.

With ``metrics.profile_steps: N`` (``recscale train --profile`` sets 5), every rank records steps
``W+1 .. W+N`` after the start (``W = metrics.profile_wait_steps``, at least the warm-up steps) and
writes into ``<run_dir>/profile/``:

    rank<r>.pt.trace.json   Chrome trace JSON: opens in Perfetto (ui.perfetto.dev) and in TensorBoard's
                            profiler plugin (``tensorboard --logdir <run_dir>/profile``)
    modules.json            rank 0's per-module table (what ``recscale report`` shows)

Per-module time. The rows and the FLOPs keys they own come from ``profile_groups.py``. Forward:
forward pre/post hooks open a ``record_function`` range around each call of a row's modules; the
row's forward time is the time inside those ranges. Backward: every autograd node carries the
sequence number of the forward op that created it, so each backward node whose forward op ran
inside a row's range is that row's (the weight gradient of a layer over raw inputs included).
What no row owns is reported as ``other``: embedding lookups and their all-to-all, the loss, the
glue ops between rows, gradient accumulation, DDP/DeepSpeed gradient reduction, the fused embedding
update, the optimizer and data loading. On CPU times are the ops' wall times; on CUDA the kernels'
device times. MFU per row = row FLOPs x examples / row time / peak (the run's peak).

Profiled steps run slower (hooks, recording); the loop leaves them out of the run's throughput.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from recscale.modules.flops import FlopCount, flop_counter
from recscale.trainer.peaks import above_peak_warning
from recscale.trainer.profile_groups import ResolvedGroup, resolve_groups
from recscale.trainer.rates import rates

log = logging.getLogger("recscale")

PROFILE_DIR = "profile"
MODULES_JSON = "modules.json"
RANGE_PREFIX = "recscale.module::"
"""Name prefix of the forward ranges in the trace (``recscale.module::fmb``)."""
BACKWARD_EVENT = "autograd::engine::evaluate_function: "


class StepProfiler:
    """Records steps ``first .. last`` (loop step numbers) with ``torch.profiler``, then writes the outputs.

    Args:
        out_dir: ``<run_dir>/profile``.
        rank: this rank (traces from every rank; the table from rank 0).
        device: the training device.
        dense: the unwrapped dense arch (``ParallelModel.dense.inner``), for the module hooks and FLOPs.
        examples_per_step: per-rank batch.
        peak_tflops: the run's peak per rank (None: MFU per row unknown).
        first: first profiled step (1-based, as the loop counts).
        last: last profiled step.
        breakdown: per-module FLOPs per example of the profiled steps, asked for when the window
            closes (``BatchFlops.profiled_breakdown``: real sequence lengths); default: ``dense.flops()``.
        peak_source: where the peak comes from (``peaks.peak_source``), for the warning of a row above 100%.
    """

    def __init__(
        self,
        out_dir: Path,
        rank: int,
        device: torch.device,
        dense: nn.Module,
        examples_per_step: int,
        peak_tflops: float | None,
        first: int,
        last: int,
        breakdown: Callable[[], dict[str, FlopCount]] | None = None,
        peak_source: str = "",
    ) -> None:
        self.out_dir, self.rank, self.device, self.dense = out_dir, rank, device, dense
        self.breakdown, self.peak_source = breakdown, peak_source
        self.examples_per_step, self.peak = examples_per_step, peak_tflops
        self.first, self.last = first, last
        self.recording = False
        self._prof: profile | None = None
        self._handles: list[Any] = []
        self._rows: list[ResolvedGroup] = []
        self._started = 0.0
        self._done = 0

    @classmethod
    def from_config(
        cls,
        steps: int,
        wait_steps: int,
        run_dir: Path,
        rank: int,
        device: torch.device,
        dense: nn.Module,
        examples_per_step: int,
        peak_tflops: float | None,
        start_step: int,
        total_steps: int,
        breakdown: Callable[[], dict[str, FlopCount]] | None = None,
        peak_source: str = "",
    ) -> StepProfiler | None:
        """The profiler of a run (None when ``steps`` is 0): the window is clamped inside the run."""
        if steps <= 0:
            return None
        last = min(start_step + wait_steps + steps, total_steps)
        first = max(start_step + 1, last - steps + 1)
        return cls(
            run_dir / PROFILE_DIR,
            rank,
            device,
            dense,
            examples_per_step,
            peak_tflops,
            first,
            last,
            breakdown,
            peak_source,
        )

    # ---------------------------------------------------------------------------------- the loop's calls

    def step_done(self, step: int) -> None:
        """Called after each step's bookkeeping: starts before step ``first``, stops after ``last``."""
        if step == self.first - 1 and not self.recording:
            self._start()
        elif self.recording:
            self._done = step - self.first + 1
            if step >= self.last:
                self._stop(self._done)

    def close(self) -> None:
        """End of the loop: stop a recording that the run ended inside (early stop)."""
        if self.recording:
            self._stop(max(1, self._done))

    # --------------------------------------------------------------------------------------- recording

    def _start(self) -> None:
        flops_keys = list(flop_counter(self.dense).flops())
        self._rows, _ = resolve_groups(self.dense, flops_keys)
        named = dict(self.dense.named_modules())
        for row in self._rows:
            for path in row.paths:
                self._handles += _range_hooks(named[path], RANGE_PREFIX + row.group.name)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._prof = profile(activities=activities)
        self._sync()
        self._prof.start()
        self._started = time.perf_counter()
        self.recording = True

    def _stop(self, steps: int) -> None:
        assert self._prof is not None
        self._sync()
        wall = time.perf_counter() - self._started
        self._prof.stop()
        self.recording = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / f"rank{self.rank}.pt.trace.json"
        tmp = trace.with_name(trace.name + ".tmp")
        self._prof.export_chrome_trace(str(tmp))
        tmp.replace(trace)
        # every rank asks: it also clears the profiled steps
        breakdown = self.breakdown() if self.breakdown else flop_counter(self.dense).flops()
        if self.rank == 0:
            table = module_table(self._prof.events(), self._rows, breakdown, self.device, steps, wall)
            table |= {"examples_per_step": self.examples_per_step, "peak_tflops": self.peak}
            table |= {"first_step": self.first, "last_step": self.first + steps - 1, "trace": trace.name}
            add_rates(table, self.examples_per_step, self.peak)
            write_json_atomic(self.out_dir / MODULES_JSON, table)
            log.info("%s", format_table(table))
            for row in table["rows"]:
                warning = above_peak_warning(row["mfu"], self.peak, self.peak_source, f"module '{row['module']}' MFU")
                if warning:
                    log.warning("%s", warning)
        self._prof = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _range_hooks(module: nn.Module, name: str) -> list[Any]:
    """Forward pre/post hooks that open and close a ``record_function`` range around each call."""
    stack: list[Any] = []

    def pre(mod: nn.Module, args: Any) -> None:
        rf = record_function(name)
        rf.__enter__()
        stack.append(rf)

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


# ------------------------------------------------------------------------------------------ the table


def _duration_us(event: Any, device: torch.device) -> float:
    if device.type == "cuda":
        return float(event.device_time_total)
    return float(event.cpu_time_total)


def _row_of(event: Any) -> str | None:
    """The row whose forward range encloses ``event`` (innermost), if any."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(RANGE_PREFIX):
            return str(parent.name[len(RANGE_PREFIX) :])
        parent = parent.cpu_parent
    return None


def module_table(
    events: Any,
    rows: list[ResolvedGroup],
    breakdown: dict[str, FlopCount],
    device: torch.device,
    steps: int,
    wall_s: float,
) -> dict[str, Any]:
    """Per-row forward / backward milliseconds per step and FLOPs per example, from profiler events."""
    forward_us: dict[str, float] = defaultdict(float)
    backward_us: dict[str, float] = defaultdict(float)
    owner: dict[tuple[int, int], str] = {}
    unattributed_backward_us = 0.0
    for e in events:
        if e.name.startswith(RANGE_PREFIX):
            forward_us[e.name[len(RANGE_PREFIX) :]] += _duration_us(e, device)
        elif e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_EVENT):
            row = _row_of(e)
            if row is not None:
                owner[(e.thread, e.sequence_nr)] = row
    for e in events:
        if e.name.startswith(BACKWARD_EVENT):
            row = owner.get((e.fwd_thread, e.sequence_nr))
            if row is None:
                unattributed_backward_us += _duration_us(e, device)
            else:
                backward_us[row] += _duration_us(e, device)
    step_ms = 1e3 * wall_s / steps
    out_rows = []
    for r in rows:
        name = r.group.name
        count = FlopCount()
        for k in r.keys:
            count = count + breakdown[k]
        out_rows.append(
            {
                "module": name,
                "paths": list(r.paths),
                "flops_keys": list(r.keys),
                "forward_ms": forward_us[name] / 1e3 / steps,
                "backward_ms": backward_us[name] / 1e3 / steps,
                "flops_forward": count.forward,
                "flops_train": count.train,
                "note": r.group.note,
            }
        )
    claimed = {k for r in rows for k in r.keys}
    in_rows = sum(r["forward_ms"] + r["backward_ms"] for r in out_rows)
    return {
        "device": device.type,
        "time_source": "cuda kernels (device time)" if device.type == "cuda" else "cpu ops (wall time)",
        "steps": steps,
        "step_ms": step_ms,
        "rows": out_rows,
        "other_ms": max(0.0, step_ms - in_rows),
        "unattributed_backward_ms": unattributed_backward_us / 1e3 / steps,
        "unclaimed_flops_keys": [k for k in breakdown if k not in claimed],
    }


def add_rates(table: dict[str, Any], examples: int, peak_tflops: float | None) -> None:
    """Add TFLOP/s and MFU to every row with time and FLOPs (MFU None without a peak)."""
    for row in table["rows"]:
        seconds = (row["forward_ms"] + row["backward_ms"]) / 1e3
        if seconds > 0 and row["flops_train"]:
            rate = rates(examples, row["flops_train"] * examples, seconds, peak_tflops)
            row["tflops"], row["mfu"] = rate.tflops_per_rank, rate.mfu
        else:
            row["tflops"], row["mfu"] = None, None


def format_table(table: dict[str, Any]) -> str:
    """The table as text (the run's log)."""
    lines = [
        f"profile of steps {table['first_step']}..{table['last_step']} ({table['time_source']}), "
        f"{table['step_ms']:.2f} ms per step, {table['examples_per_step']} examples per rank",
        f"{'module':<14} {'fwd ms':>9} {'bwd ms':>9} {'MFLOP/ex':>10} {'TFLOP/s':>9} {'MFU':>7}",
    ]
    for r in table["rows"]:
        tflops = f"{r['tflops']:.4f}" if r["tflops"] is not None else "-"
        util = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(
            f"{r['module']:<14} {r['forward_ms']:>9.3f} {r['backward_ms']:>9.3f} "
            f"{r['flops_train'] / 1e6:>10.3f} {tflops:>9} {util:>7}"
        )
    lines.append(f"{'other':<14} {table['other_ms']:>19.3f}  (embeddings, comms, loss, optimizer, data, glue)")
    return "\n".join(lines)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
