"""Run the real ``recscale`` command from benchmark scripts and read what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def recscale(*args: str) -> str:
    """``recscale ARGS`` (one thread per rank); its stdout, or exit with its output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ROOT / ".venv/bin/recscale"), *args], env=env, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"recscale {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


FINAL_EVAL_ONLY = ["trainer.eval_every=0", "checkpoint.every_steps=0", "checkpoint.at_end=false"]
"""Overrides of a benchmark run judged by its final evaluation alone: no periodic evaluation, no checkpoints."""


def quiet(run_root: Path) -> list[str]:
    """Overrides every benchmark run takes: its run directory under ``run_root``, no progress bar, no
    TensorBoard files (the results are read from ``summary.json`` and ``metrics.jsonl``)."""
    return [f"launch.run_root={run_root}", "metrics.progress_bar=never", "metrics.tensorboard=false"]


def train(preset: str, overrides: list[str], nproc: int = 2) -> tuple[Path, dict[str, Any]]:
    """``recscale train PRESET --nproc N --set ...``; returns the run directory and its summary."""
    out = recscale("train", preset, "--nproc", str(nproc), *[x for s in overrides for x in ("--set", s)])
    run_dir = Path(next(x for x in out.splitlines() if x.startswith("run directory: ")).split(": ", 1)[1])
    return run_dir, json.loads((run_dir / "summary.json").read_text())
