"""What a run records: ``metrics.jsonl`` lines and TensorBoard scalars (rank 0), and memory peaks.

Rates (examples/s, TFLOP/s, MFU) are computed in ``trainer/rates.py``; FLOP counts of the trained
batches in ``trainer/batch_flops.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from recscale.trainer.run_dir import METRICS, TENSORBOARD


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl`` and scalars to TensorBoard (on rank 0 only).

    Args:
        run_dir: the run directory.
        enabled: write anything at all (true on rank 0).
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = open(run_dir / METRICS, "a") if enabled else None  # noqa: SIM115 - kept open for the run
        self._tb: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record: ``{"kind": kind, "step": step, "time": unix time, **values}``."""
        if not self.enabled or self._file is None:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush and close."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory of this process, MiB (device memory on CUDA, resident set on CPU)."""
    if device.type == "cuda":
        return {
            "mem_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "mem_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    import resource

    return {"mem_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
