"""The ``recscale`` command line end to end (real torchrun launches on 2 CPU ranks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.launch.helpers import in_process

ROOT = Path(__file__).resolve().parents[2]
RECSCALE = [sys.executable, "-m", "recscale.launch.cli"]

pytestmark = pytest.mark.integration

SMALL = [
    "data.synthetic.num_train=8192",
    "data.synthetic.num_valid=2048",
    "data.synthetic.row_group_size=1024",
    "trainer.batch_size=512",
    "trainer.eval_every=8",
    "trainer.eval_batches=2",
    "trainer.log_every=2",
    "checkpoint.every_steps=8",
    "metrics.progress_bar=never",
]


def recscale(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*RECSCALE, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"recscale {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def with_sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sets = [*SMALL, f"data.cache_dir={root / 'cache'}", f"launch.run_root={root / 'runs'}"]
    proc = recscale("train", "quickstart", "--nproc", "2", *with_sets(sets))
    run_dir = Path(proc.stdout.strip().splitlines()[-2].split("run directory: ", 1)[1])
    return run_dir, proc


def test_train_prints_metrics_and_the_run_directory(trained):
    run_dir, proc = trained
    lines = proc.stdout.strip().splitlines()
    assert lines[-4].startswith("validation: auc ") and "oracle" in lines[-4] and "logloss" in lines[-4]
    assert lines[-2] == f"run directory: {run_dir}"
    assert lines[-1] == f"report: {run_dir / 'report.html'}"
    for name in ("config.yaml", "plan.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000008", "step_00000016"]
    logs = list((run_dir / "logs").rglob("stderr.log"))
    assert len(logs) == 2  # every rank's output is kept


def test_metrics_lines_carry_throughput_mfu_and_time_split(trained):
    run_dir, _ = trained
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(2, 17, 2))
    for key in ("loss", "examples_per_s", "tflops_per_rank", "mfu", "lr", "mem_rss_mib", "time/forward"):
        assert key in train[-1], key
    assert train[-1]["mfu"] is not None and 0 < train[-1]["mfu"] < 1
    evals = [r for r in records if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [8, 16] and evals[-1]["final"] is True
    assert evals[-1]["num_examples"] == 2048  # the final evaluation reads every validation example once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_eval"]["auc"] == evals[-1]["auc"]
    assert summary["world_size"] == 2 and summary["versions"]["torchrec"] == "1.8.0"


def test_eval_of_a_checkpoint_matches_the_runs_final_evaluation(trained, capfd):
    run_dir, _ = trained
    proc = in_process(capfd, "eval", str(run_dir / "checkpoints" / "step_00000016"), "--nproc", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    final = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    assert result["step"] == 16 and result["num_examples"] == 2048
    assert result["auc"] == pytest.approx(final["auc"], abs=1e-6)
    assert result["logloss"] == pytest.approx(final["logloss"], abs=1e-6)
    assert "oracle_auc" in result


def test_eval_of_a_damaged_checkpoint_or_wrong_columns_is_one_line(trained, tmp_path, capfd):
    from tests.launch.test_one_line_errors import assert_one_error_line, traceback_log

    run_dir, _ = trained
    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged, ignore=shutil.ignore_patterns("logs", "tensorboard", "report*"))
    shard = sorted((damaged / "checkpoints" / "step_00000016").glob("*.distcp"))[0]
    with open(shard, "r+b") as f:
        f.seek(100)
        f.write(b"xxxx")
    line = assert_one_error_line(in_process(capfd, "eval", str(damaged)), "eval", str(shard), "checksum mismatch")
    assert "Traceback" in traceback_log(line) and str(damaged / "logs" / "eval-") in line

    table = pq.read_table(next((run_dir.parent.parent / "cache").rglob("valid")))
    pq.write_table(table.drop(["item"]), tmp_path / "no_item.parquet")
    proc = in_process(capfd, "eval", str(run_dir), "--data", str(tmp_path / "no_item.parquet"))
    assert_one_error_line(proc, "eval", str(tmp_path / "no_item.parquet"), "column 'item' (sparse) is missing")


def test_plan_for_a_big_cluster_prints_the_plan_without_gpus(tmp_path, capfd):
    out = tmp_path / "plan.json"
    proc = in_process(
        capfd,
        "plan",
        "dlrm_criteo",
        "--world-size",
        "64",
        "--device",
        "cuda",
        "--hbm-gb",
        "80",
        "--ranks-per-node",
        "8",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Embedding plan (planner) for 64 x cuda" in proc.stdout
    assert "t_C3" in proc.stdout and "estimated embedding step time" in proc.stdout
    assert json.loads(out.read_text())["world_size"] == 64


def test_plan_that_cannot_fit_fails_with_the_planners_reason(capfd):
    proc = in_process(
        capfd,
        "plan",
        "dlrm_criteo",
        "--world-size",
        "2",
        "--device",
        "cuda",
        "--hbm-gb",
        "0.001",
        "--ddr-gb",
        "0.001",
    )
    assert proc.returncode == 2
    assert "could not place the tables on 2 x cuda" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_fails_fast_with_one_line_and_starts_nothing(tmp_path, capfd):
    proc = in_process(
        capfd,
        "train",
        "quickstart",
        "--nproc",
        "3",
        "--set",
        "trainer.batch_size=1000",
        "--set",
        f"launch.run_root={tmp_path}",
    )
    assert proc.returncode == 2
    assert "trainer.batch_size: 1000 is not divisible by the world size 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no run directory, no process started


def test_unknown_override_key_is_reported(capfd):
    proc = in_process(capfd, "config", "quickstart", "--set", "trainer.bach_size=4")
    assert proc.returncode == 2
    assert "trainer.bach_size: unknown key; did you mean 'batch_size'?" in proc.stderr


def test_flops_table_sums_to_the_total(capfd):
    proc = in_process(capfd, "flops", "dcnv2_criteo", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    total = rows.pop("total")
    assert sum(r["train"] for r in rows.values()) == total["train"] > 0


def test_golden_quickstart_run(trained):
    """The quickstart run on 2 ranks with a fixed seed reproduces its stored losses (tests/assets)."""
    run_dir, _ = trained
    golden = json.loads((ROOT / "tests" / "assets" / "golden_quickstart.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {str(r["step"]): r["loss"] for r in records if r["kind"] == "train"}
    for step, expected in golden["losses"].items():
        assert losses[step] == pytest.approx(expected, rel=golden["tolerance_rel"]), f"step {step}"
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["auc"] == pytest.approx(golden["final_auc"], rel=golden["tolerance_rel"])
