"""The Kunlun benchmark scripts run (the GPU MFU one at tiny shapes on CPU) and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)  # fmt: skip


def test_mfu_script_runs_on_cpu_at_tiny_shapes(tmp_path: Path) -> None:
    out = tmp_path / "mfu.json"
    _run("mfu_gpu_kunlun.py", "--device", "cpu", "--tiny", "--dtype", "fp32", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["tiny"] is True
    assert result["step_ms"] > 0 and 0 < result["mfu"] < 1
    assert {m["module"] for m in result["modules"]} == {"gdpa", "swa", "hsp", "xsum", "mowe"}
    assert result["shapes"]["seq_len"] == 32 and result["model_flops_per_example"] > 0


def test_cost_script_writes_the_reductions(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    _run("kunlun_cost.py", "--out", str(out))
    result = json.loads(out.read_text())
    assert 0.3 < result["flops_reduction_compskip"] < 0.6
    assert 0.15 < result["flops_reduction_swa"] < 0.45
    assert result["executed_reduction"]["sdpa"]["swa"] == 0.0  # a window mask under SDPA saves nothing
    for variant in result["variants"].values():
        assert variant["auc"] is None and variant["oracle_auc"] is None
    assert result["shapes"]["seq_len"] == 1000 and result["shapes"]["dim"] >= 256
