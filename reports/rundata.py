"""Reading what runs, sweeps and scaling-law studies leave on disk (plain files: no torch).

A run directory (docs/training.md) holds ``config.yaml``, ``summary.json``, ``metrics.jsonl``,
``plan.json`` and, after ``--profile``, ``profile/modules.json``. A sweep directory holds
``sweep.json`` (its run directories), a scaling-law directory ``scaling_law.json``, and either may hold
``projection.json``. The file names mirror ``recscale.trainer.run_dir``; reports may not import the
trainer (import-linter), so they are repeated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
PLAN = "plan.json"
PROFILE_TABLE = "profile/modules.json"
SWEEP = "sweep.json"
SCALING_LAW = "scaling_law.json"
PROJECTION = "projection.json"

WARMUP_STEPS = 3
"""Steps the trainer leaves out of the steady-state throughput (``trainer/run_meter.py``); windows that
contain them are left out of the time split too."""

PHASES = ("data", "input_dist", "forward", "backward", "optimizer")
"""The step phases the trainer times (``trainer/pipeline.py``)."""


@dataclass
class RunData:
    """Everything a report needs from one run directory."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    plan: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    def kind(self, kind: str) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` records of one kind (``train``, ``eval``, ...)."""
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def final_eval(self) -> dict[str, Any]:
        """The final evaluation's metrics."""
        return dict(self.summary.get("final_eval") or {})

    @property
    def world_size(self) -> int:
        """Ranks the run used."""
        return int(self.summary.get("world_size", 1))

    @property
    def examples_per_s(self) -> float:
        """Steady-state global throughput."""
        return float(self.summary.get("throughput", {}).get("examples_per_s") or 0.0)

    @property
    def flops_train(self) -> float:
        """Training FLOPs per example (forward + backward, analytic)."""
        return float(self.summary.get("flops_per_example", {}).get("train") or 0.0)


@dataclass
class StudyData:
    """A sweep or a scaling-law directory: its index file and the runs it lists."""

    path: Path
    kind: str
    """``sweep``, ``scaling_law`` or ``projection`` (a directory with only ``projection.json``)."""
    index: dict[str, Any]
    runs: list[RunData] = field(default_factory=list)
    projection: dict[str, Any] | None = None


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text())


def read_records(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` lines; a torn last line (a run still writing) is skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def load_run(path: Path) -> RunData:
    """Read a finished run directory.

    Raises:
        ValueError: ``path`` is not a run directory or the run has not written its summary.
    """
    path = Path(path).expanduser()
    if not (path / CONFIG).is_file():
        raise ValueError(f"{path}: not a run directory (no {CONFIG})")
    if not (path / SUMMARY).is_file():
        raise ValueError(f"{path}: the run has no {SUMMARY} (did it finish?)")
    plan = read_json(path / PLAN) if (path / PLAN).is_file() else None
    profile = read_json(path / PROFILE_TABLE) if (path / PROFILE_TABLE).is_file() else None
    return RunData(
        path=path,
        config=yaml.safe_load((path / CONFIG).read_text()) or {},
        summary=read_json(path / SUMMARY),
        records=read_records(path / METRICS),
        plan=plan,
        profile=profile,
    )


def load_study(path: Path) -> StudyData:
    """Read a sweep or scaling-law directory and the runs it lists (relative paths are to the directory)."""
    path = Path(path).expanduser()
    for name, kind in ((SWEEP, "sweep"), (SCALING_LAW, "scaling_law")):
        if (path / name).is_file():
            index = read_json(path / name)
            runs = [load_run(_resolve(path, r["run_dir"])) for r in index.get("runs", []) if r.get("run_dir")]
            projection = read_json(path / PROJECTION) if (path / PROJECTION).is_file() else None
            return StudyData(path, kind, index, runs, projection)
    if (path / PROJECTION).is_file():
        return StudyData(path, "projection", {}, [], read_json(path / PROJECTION))
    raise ValueError(f"{path}: neither a sweep ({SWEEP}), a scaling-law ({SCALING_LAW}) nor a projection directory")


def _resolve(base: Path, run_dir: str) -> Path:
    p = Path(run_dir)
    return p if p.is_absolute() else base / p


def is_study(path: Path) -> bool:
    """``path`` is a sweep, scaling-law or projection directory (not a run directory)."""
    if (path / CONFIG).is_file():
        return False
    return any((path / name).is_file() for name in (SWEEP, SCALING_LAW, PROJECTION))


def steady_train_records(run: RunData) -> list[dict[str, Any]]:
    """``train`` records of steady windows (all of them if none is).

    Left out: windows holding warm-up steps, and windows holding profiled steps or the step after them
    (the trace is written then).
    """
    train = run.kind("train")
    every = int(run.config.get("trainer", {}).get("log_every", 1) or 1)
    lo, hi = (run.profile["first_step"], run.profile["last_step"] + 1) if run.profile else (0, -1)

    def steady(r: dict[str, Any]) -> bool:
        first = r["step"] - every + 1  # the window's first step
        return first > WARMUP_STEPS and not (first <= hi and r["step"] >= lo)

    return [r for r in train if steady(r)] or train


def time_split(run: RunData) -> dict[str, float]:
    """Mean seconds per step by phase over the steady windows, plus ``idle`` (step time minus phases).

    ``idle`` is the part of the step that no phase timer saw: the loop's own bookkeeping and, on GPU,
    waiting that the phases' synchronisation did not catch.
    """
    rows = steady_train_records(run)
    if not rows:
        return {}
    out = {p: sum(float(r.get(f"time/{p}", 0.0) or 0.0) for r in rows) / len(rows) for p in PHASES}
    step = sum(float(r.get("step_time_s", 0.0) or 0.0) for r in rows) / len(rows)
    out["idle"] = max(0.0, step - sum(out.values()))
    moe = [float(r["time/moe_dispatch_fwd"]) for r in rows if r.get("time/moe_dispatch_fwd") is not None]
    if moe:
        out["moe_dispatch_fwd"] = sum(moe) / len(moe)
    return out
