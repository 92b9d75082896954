"""``benchmarks/mfu_gpu.py`` runs end to end on CPU at tiny shapes (the GPU run uses the same code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mfu_gpu_script_smoke_test_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "mfu_gpu.json"
    models = "dcnv2,dcnv2_hilomoe,wukong_5p6g,kunlun"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "mfu_gpu.py"),
        "--device",
        "cpu",
        "--tiny",
        "--dtype",
        "fp32",
        "--modules",
        "--models",
        models,
        "--out",
        str(out),
    ]
    subprocess.run(
        cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, timeout=300
    )
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["peak_source"] == "CPU matmul probe" and result["peak_tflops"] > 0
    assert set(result["models"]) == set(models.split(","))
    for name, m in result["models"].items():
        assert m["step_ms"] > 0 and m["tflops"] > 0 and 0 < m["mfu"] < 1, name
        assert m["shapes"]["batch"] == 8 and m["device"] and m["flops_per_example_train"] > 0
        rows = m["modules"]["rows"]
        assert rows and all(r["forward_ms"] > 0 for r in rows), name
    assert result["models"]["wukong_5p6g"]["goal_mfu"] == 0.40 and result["models"]["dcnv2"]["goal_mfu"] is None
    assert result["models"]["wukong_5p6g"]["shapes"]["preset"] == "wukong_scale_5p6g"
    assert {r["module"] for r in result["models"]["kunlun"]["modules"]["rows"]} >= {"gdpa", "hsp", "mowe"}
