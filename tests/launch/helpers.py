"""Running the ``recscale`` CLI (in a subprocess, or its entry point in this process) with a small, fast job
(synthetic data, 16 steps)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.trainer.runs import SMALL

ROOT = Path(__file__).resolve().parents[2]
RECSCALE = [sys.executable, "-m", "recscale.launch.cli"]


def small_sets(root: Path) -> list[str]:
    """``--set`` arguments of tests/trainer/runs.py's small job, with its cache and run root under ``root``."""
    sets = [f"data.cache_dir={root / 'cache'}", f"launch.run_root={root / 'runs'}", *SMALL]
    return [x for s in sets for x in ("--set", s)]


def recscale(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``recscale ARGS`` from the repository root (where the checked-in .torchxconfig is)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*RECSCALE, *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)


def in_process(capfd: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``recscale ARGS`` through the console script's entry point (``cli.main``) in this process, its exit code
    and console (``capfd``'s capture) returned as ``recscale`` returns them.

    The command's own work (checks, planning, launching torchrun, reports) runs here, with no interpreter,
    torch or TorchRec start-up to wait for (seconds per command); ranks still start under torchrun. The
    console of a fresh ``recscale`` process (no import-time noise) is checked in ``test_one_line_errors.py``.
    """
    from recscale.launch import cli

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capfd.readouterr()  # what earlier output left in the capture
    try:
        code = cli.main(list(args))
    finally:  # cli.main points the root logger at this capture: give later tests theirs back
        root.handlers[:], root.level = handlers, level
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([*RECSCALE, *args], code, out, err)


def run_dir_of(proc: subprocess.CompletedProcess[str]) -> Path:
    """The run directory a launch printed last."""
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run directory: "), proc.stdout + proc.stderr
    return Path(last.split("run directory: ", 1)[1])


def records(run_dir: Path, kind: str) -> list[dict]:
    """The ``kind`` records of metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Non-empty stderr lines."""
    return [line for line in proc.stderr.splitlines() if line.strip()]
