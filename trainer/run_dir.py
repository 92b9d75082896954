"""The run directory: everything one job writes, in one place.

<run_dir>/config.yaml        the resolved config (written before any rank starts)
<run_dir>/plan.json          the embedding plan
<run_dir>/metrics.jsonl      one JSON record per logged step, evaluation, stage boundary
<run_dir>/tensorboard/       TensorBoard event files
<run_dir>/checkpoints/       step_<N>/ directories (complete ones only); best -> best-<N>
<run_dir>/logs/              torchrun's per-rank stdout/stderr
<run_dir>/summary.json       final metrics, throughput, MFU, config hash, versions
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
PLAN = "plan.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
TENSORBOARD = "tensorboard"


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create ``<root>/<name>-<timestamp>`` (a suffix is added if it exists); fail clearly if unwritable."""
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"launch.run_root: cannot create {root}: {err.strerror}") from None
    if not os.access(root, os.W_OK):
        raise ValueError(f"launch.run_root: {root} is not writable")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{name}-{stamp}" if i == 0 else f"{name}-{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ValueError(f"launch.run_root: could not create a fresh run directory under {root}")


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, then rename (readers never see half a file)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
