"""The Kunlun benchmark scripts run (the GPU MFU one at tiny shapes on CPU) and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def cost_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The text of one fresh ``kunlun_cost.py --out`` (no trained results yet), shared by the tests below."""
    out = tmp_path_factory.mktemp("kunlun_cost") / "cost.json"
    _run("kunlun_cost.py", "--out", str(out))
    return out.read_text()


def test_cost_script_writes_the_reductions(cost_json: str) -> None:
    result = json.loads(cost_json)
    assert 0.3 < result["flops_reduction_compskip"] < 0.6
    assert 0.15 < result["flops_reduction_swa"] < 0.45
    assert result["executed_reduction"]["sdpa"]["swa"] == 0.0  # a window mask under SDPA saves nothing
    for variant in result["variants"].values():
        assert variant["auc"] is None and variant["oracle_auc"] is None
    assert result["shapes"]["seq_len"] == 1000 and result["shapes"]["dim"] >= 256


def test_recounting_the_flops_keeps_the_trained_quality(cost_json: str, tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    trained = json.loads(cost_json)  # the script's own output, as a fresh run of it writes it
    run = {"seed": 0, "auc": 0.74, "auc_gap": 0.12}
    trained["auc"], trained["equal_quality"] = {"full": 0.74}, {"compskip": {"within_0.1_percent": True}}
    trained["preset"]["variants"]["full"].update(auc=0.74, oracle_auc=0.86, runs=[run])
    trained["preset"]["variants"]["swa"].update(auc=0.73, overrides=["something.else=1"])  # trained differently
    out.write_text(json.dumps(trained))
    _run("kunlun_cost.py", "--out", str(out))
    again = json.loads(out.read_text())
    assert again["auc"] == {"full": 0.74} and again["equal_quality"] == trained["equal_quality"]
    full = again["preset"]["variants"]["full"]
    assert (full["auc"], full["oracle_auc"], full["runs"]) == (0.74, 0.86, [run])
    assert again["preset"]["variants"]["swa"]["auc"] is None  # its overrides changed: not the same variant
    assert again["flops_reduction_compskip"] == trained["flops_reduction_compskip"]
