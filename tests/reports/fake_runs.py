"""Run, sweep and scaling-law directories written by hand, with the files the trainer writes.

Reports read plain files, so their tests need no training: these helpers write ``config.yaml``,
``summary.json``, ``metrics.jsonl``, ``plan.json`` and ``profile/modules.json`` shaped like the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_run(
    path: Path,
    world_size: int = 1,
    examples_per_s: float = 1000.0,
    batch_per_rank: int = 256,
    flops_train: float = 3e6,
    logloss: float = 0.30,
    auc: float = 0.75,
    profile: bool = False,
) -> Path:
    """A finished run directory with 10 train windows (log_every 2) and 2 evaluations."""
    path.mkdir(parents=True)
    config = {"name": path.name, "model": {"arch": "dcnv2"}, "trainer": {"log_every": 2, "batch_size": 256}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    per_rank = examples_per_s / world_size
    step_s = batch_per_rank / per_rank
    summary = {
        "name": path.name,
        "world_size": world_size,
        "device": "cpu",
        "device_name": "test cpu",
        "precision": "fp32",
        "batch_size": batch_per_rank * world_size,
        "batch_size_per_rank": batch_per_rank,
        "steps": 20,
        "final_eval": {
            "auc": auc,
            "logloss": logloss,
            "ne": logloss / 0.33,
            "oracle_auc": 0.85,
            "oracle_logloss": 0.25,
            "num_examples": 1000,
        },
        "throughput": {
            "examples_per_s": examples_per_s,
            "examples_per_s_per_rank": per_rank,
            "mean_step_time_s": step_s,
            "steps_measured": 17,
            "excluded_warmup_steps": 3,
        },
        "flops_per_example": {"forward": flops_train / 3, "train": flops_train},
        "flops_breakdown": {
            "cross": {"forward": flops_train / 6, "train": flops_train / 2},
            "deep": {"forward": flops_train / 6, "train": flops_train / 2},
        },
        "dense_parameters": 1000,
        "embedding": {"bytes_per_example": 512.0, "gbytes_per_s_per_rank": 512 * per_rank / 1e9},
        "peak_tflops_per_rank": 0.1,
        "tflops_per_rank": flops_train * per_rank / 1e12,
        "mfu": flops_train * per_rank / 1e11,
        "wall_time_s": 3.0,
        "versions": {"python": "3.11", "torch": "2.13.0"},
    }
    (path / "summary.json").write_text(json.dumps(summary))
    lines = []
    for step in range(2, 22, 2):
        split = {"data": 0.1, "input_dist": 0.1, "forward": 0.4, "backward": 0.3, "optimizer": 0.05}
        record = {
            "kind": "train",
            "step": step,
            "loss": 0.5 - 0.01 * step,
            "examples_per_s": examples_per_s,
            "mfu": summary["mfu"],
            "step_time_s": step_s,
            **{f"time/{k}": v * step_s for k, v in split.items()},
        }
        lines.append(record)
    lines += [{"kind": "eval", "step": s, "auc": auc - 0.01 * (s == 10), "logloss": logloss} for s in (10, 20)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    plan = {
        "world_size": world_size,
        "device": "cpu",
        "source": "planner",
        "est_step_ms": 0.1,
        "bytes_per_rank": [1000 * (r + 1) for r in range(world_size)],
        "tables": [
            {
                "table": "t0",
                "rows": 100,
                "dim": 16,
                "sharding_type": "table_wise",
                "compute_kernel": "fused",
                "shards": [{"rank": 0}],
            }
        ],
    }
    (path / "plan.json").write_text(json.dumps(plan))
    if profile:
        (path / "profile").mkdir()
        rows = [
            {
                "module": m,
                "paths": [m],
                "flops_keys": [m],
                "forward_ms": 1.0,
                "backward_ms": 2.0,
                "flops_forward": 1e6,
                "flops_train": 1.5e6,
                "note": "",
                "tflops": 0.05,
                "mfu": 0.5,
            }
            for m in ("cross", "deep")
        ]
        table = {
            "device": "cpu",
            "time_source": "cpu ops (wall time)",
            "steps": 3,
            "step_ms": 8.0,
            "rows": rows,
            "other_ms": 2.0,
            "unattributed_backward_ms": 0.5,
            "unclaimed_flops_keys": [],
            "examples_per_step": 256,
            "peak_tflops": 0.1,
            "first_step": 6,
            "last_step": 8,
            "trace": "rank0.pt.trace.json",
        }
        (path / "profile" / "modules.json").write_text(json.dumps(table))
    return path


def write_sweep(path: Path, mode: str = "weak", sizes: tuple[int, ...] = (1, 2, 4)) -> Path:
    """A sweep directory: per-rank throughput 1000, 900, 700 examples/s."""
    path.mkdir(parents=True)
    per_rank = {1: 1000.0, 2: 900.0, 4: 700.0}
    runs = []
    for n in sizes:
        write_run(path / "runs" / f"ws{n}", world_size=n, examples_per_s=per_rank[n] * n)
        runs.append({"world_size": n, "run_dir": f"runs/ws{n}", "ok": True, "exit_code": 0})
    index = {
        "kind": "sweep",
        "config": "quickstart",
        "mode": mode,
        "world_sizes": list(sizes),
        "batch_size_per_rank": 256,
        "global_batch": None,
        "steps": 20,
        "scheduler": "local",
        "runs": runs,
    }
    (path / "sweep.json").write_text(json.dumps(index))
    return path
