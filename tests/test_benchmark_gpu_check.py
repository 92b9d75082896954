"""``benchmarks/gpu_check.sh``: the GPU machine's first check runs end to end on CPU (tiny shapes) with
TorchRec, FBGEMM and DeepSpeed unimportable and recscale not installed, as on that machine, and fails
loudly (non-zero exit, the reason printed) when something goes wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

# Loaded before anything else in every interpreter of the check (sitecustomize): the heavy stacks cannot
# be imported, and the installed (editable) recscale is taken away, so only a bare checkout's path works.
GPU_MACHINE = """
import sys
BLOCKED = ("torchrec", "fbgemm_gpu", "deepspeed")
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
sys.meta_path.insert(0, _Blocked())
"""


def _gpu_machine(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GPU_MACHINE)
    return {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def _check(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--dtype", "fp32", "--out-dir", str(tmp_path / "out")]
    return subprocess.run(
        [*cmd, *args], env=env or _gpu_machine(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_the_check_runs_end_to_end_without_torchrec_and_without_an_installed_recscale(tmp_path):
    env = _gpu_machine(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torchrec"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "No module named 'torchrec'" in blocked.stderr  # the blocker works
    bare = subprocess.run([sys.executable, "-c", "import recscale.modules"], env=env, cwd=tmp_path, capture_output=True)
    assert bare.returncode != 0  # and no installed recscale
    proc = _check(tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list((tmp_path / "out").glob("gpu_check_*.json"))
    assert [p.name for p in results] == [f"gpu_check_{gpu_check_slug()}.json"]
    check = json.loads(results[0].read_text())
    assert check["ok"] is True and check["failures"] == [] and check["tiny"] is True
    assert check["recscale_installed"] is False
    assert check["heavy_stacks_present"] == {"torchrec": False, "fbgemm_gpu": False, "deepspeed": False}
    models = {"dcnv2_mlperf", "dcnv2_hilomoe", "wukong_0p5g", "wukong_5p6g", "wukong_22g", "kunlun"}
    assert set(check["mfu"]) == models and set(check["sync"]) == models - {"wukong_22g"}
    for name in models:
        assert check["mfu"][name]["step_ms"] > 0 and 0 < check["mfu"][name]["mfu"] < 1, name
    for name in check["sync"]:
        assert check["sync"][name]["ok"] is True and check["sync"][name]["checked"] is False, name  # no CUDA here
    assert check["sync"]["dcnv2_mlperf"]["optimizer"] == "adagrad"  # the MLPerf preset's dense optimizer
    assert check["tests"]["not_importable"]["tests/modules/test_attention.py"] == "needs torchrec"
    mfu = json.loads((tmp_path / "out" / "mfu_gpu.json").read_text())
    assert set(mfu["models"]) == models and mfu["models"]["dcnv2_mlperf"]["shapes"]["preset"] == "mlperf_dlrm_dcnv2"
    assert "OK in" in proc.stdout


def gpu_check_slug() -> str:
    """This machine's device name as the check writes it into its file name."""
    from recscale.trainer.peaks import device_description

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch

    return gpu_check.device_slug(device_description(torch.device("cpu")))


def test_a_failing_model_and_an_overrun_budget_fail_the_check(tmp_path):
    proc = _check(
        tmp_path,
        "--models",
        "dcnv2_mlperf,no_such_model",
        "--sync-models",
        "dcnv2_mlperf",
        "--skip-tests",
        "--budget-s",
        "0",
    )
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "mfu no_such_model" in proc.stdout and "over the budget" in proc.stdout
    check = json.loads(next((tmp_path / "out").glob("gpu_check_*.json")).read_text())
    assert check["ok"] is False and check["sync"]["dcnv2_mlperf"]["ok"] is True  # the others still ran


def test_the_shell_limit_stops_a_check_that_runs_too_long(tmp_path):
    env = {**_gpu_machine(tmp_path), "GPU_CHECK_LIMIT_S": "1"}
    proc = _check(tmp_path, env=env)
    assert proc.returncode == 124 and "stopped after 1 s" in proc.stderr


def test_the_test_stage_runs_gpu_marked_files_that_import_and_reports_the_others(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    good = tmp_path / "test_good.py"
    good.write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_runs():\n    assert 1 + 1 == 2\n\n"
        "@pytest.mark.gpu\n@pytest.mark.skipif(True, reason='no CUDA')\ndef test_skips():\n    pass\n\n"
        "def test_not_gpu():\n    raise AssertionError('not selected by -m gpu')\n"
    )
    heavy = tmp_path / "test_heavy.py"
    heavy.write_text("import torchrec_is_not_here\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result, failures = gpu_check.test_stage(env, 120, [good, heavy])
    assert failures == [] and result["counts"] == {"tests": 2, "failures": 0, "errors": 0, "skipped": 1}
    assert result["not_importable"] == {str(heavy): "needs torchrec_is_not_here"}
    bad = tmp_path / "test_bad.py"
    bad.write_text("import pytest\n\n@pytest.mark.gpu\ndef test_fails():\n    assert False\n")
    result, failures = gpu_check.test_stage(env, 120, [good, bad])
    assert result["counts"]["failures"] == 1 and failures and "pytest exited 1" in failures[0]
