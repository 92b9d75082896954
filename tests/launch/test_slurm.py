"""``recscale launch --scheduler slurm`` on a real Slurm cluster (``scripts/slurm-up.sh``: two nodes, this machine).

Skipped, with the reason, when no Slurm client is installed or no controller answers. ``.ci/run``
brings the cluster up first (installing Debian's packages) and down at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.launch.helpers import records, recscale, run_dir_of, small_sets

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]


def _slurm_problem() -> str:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed (bash scripts/slurm-up.sh installs Debian's packages and starts a cluster)"
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %t"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if out.returncode != 0:
        return f"no Slurm controller answers (bash scripts/slurm-up.sh starts one): {out.stderr.strip()[:200]}"
    if len(out.stdout.split("\n")) < 2 or shutil.which("sacct") is None:
        return f"the Slurm cluster needs 2 nodes and sacct; sinfo says: {out.stdout.strip()}"
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    problem = _slurm_problem()
    if problem:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("slurm")
    return root, {"RECSCALE_STATE_DIR": str(root / "state")}


def sacct_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "--parsable2", "--noheader", "-j", job_id, "--format=JobID,JobName,State,NodeList"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return {row[1]: f"{row[2]} {row[3]}" for row in rows if "." not in row[0]}


def test_two_node_training_job_completes_and_writes_one_run_dir(cluster):
    root, env = cluster
    start = time.monotonic()
    proc = recscale("launch", "quickstart", "-s", "slurm", "-j", "2x1", "--wait", *small_sets(root), env=env)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    handle = proc.stdout.splitlines()[0]
    assert handle.startswith("slurm://torchx/")
    job_id = handle.rsplit("/", 1)[1]
    assert sacct_states(job_id) == {"quickstart-0": "COMPLETED node1", "quickstart-1": "COMPLETED node2"}
    run_dir = run_dir_of(proc)
    for name in ("config.yaml", "plan.json", "metrics.jsonl", "summary.json", "launch.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 16
    assert [r["step"] for r in records(run_dir, "train")] == list(range(1, 17))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step_00000016"
    slurm_logs = run_dir / "logs" / "slurm"
    for k in (0, 1):  # the scheduler's per-node output and torchrun's per-rank files, all in the run dir
        assert (slurm_logs / f"slurm-{job_id}-quickstart-{k}.err").stat().st_size > 0
        assert len(list((run_dir / "logs" / f"node{k}").rglob("attempt_0/0/stderr.log"))) == 1
    assert (slurm_logs / "torchx-sbatch.sh").is_file()

    status = recscale("status", handle, env=env)
    assert status.returncode == 0, status.stderr
    assert f"{handle}: SUCCEEDED" in status.stdout
    assert "quickstart/0: SUCCEEDED" in status.stdout and "quickstart/1: SUCCEEDED" in status.stdout
    logs = recscale("logs", handle, env=env)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert any(line.startswith("quickstart/0 ") and "step 16/16" in line for line in lines)
    assert any(line.startswith("quickstart/1 ") for line in lines)
    print(f"slurm 2x1 training job: submit to COMPLETED in {seconds:.1f} s")


def test_a_failing_job_is_reported_failed(cluster):
    root, env = cluster
    fault = {**env, "RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "2"}
    start = time.monotonic()
    proc = recscale("launch", "quickstart", "-s", "slurm", "-j", "2x1", "--wait", *small_sets(root), env=fault)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    handle = proc.stdout.splitlines()[0]
    assert f"{handle}: FAILED" in proc.stderr
    status = recscale("status", handle, env=env)
    assert f"{handle}: FAILED" in status.stdout
    print(f"slurm failing job: FAILED in {time.monotonic() - start:.1f} s")


def test_cancel_stops_a_running_job(cluster):
    root, env = cluster
    long_job = [*small_sets(root), "--set", "trainer.epochs=500", "--set", "checkpoint.every_steps=0"]
    proc = recscale("launch", "quickstart", "-s", "slurm", "-j", "2x1", *long_job, env=env)  # no --wait
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    handle = proc.stdout.splitlines()[0]
    job_id = handle.rsplit("/", 1)[1]
    deadline = time.monotonic() + 120
    while f"{handle}: RUNNING" not in recscale("status", handle, env=env).stdout:
        assert time.monotonic() < deadline, "the job did not start running"
        time.sleep(1)
    start = time.monotonic()
    cancel = recscale("cancel", handle, env=env)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert cancel.stdout.strip() == f"{handle}: CANCELLED"
    assert all(state.startswith("CANCELLED") for state in sacct_states(job_id).values()), sacct_states(job_id)
    assert f"{handle}: CANCELLED" in recscale("status", handle, env=env).stdout
    again = recscale("cancel", handle, env=env)
    assert again.stdout.strip() == f"{handle}: already ended CANCELLED"
    print(f"slurm cancel: RUNNING to CANCELLED in {time.monotonic() - start:.1f} s")


def test_sweep_at_one_and_two_ranks_runs_each_as_a_slurm_job(cluster):
    """``recscale sweep --scheduler slurm``: one job per world size (``-j 1xN``), waited for in turn."""
    root, env = cluster
    out = root / "sweep"
    start = time.monotonic()
    proc = recscale(
        "sweep", "quickstart", "--world-sizes", "1,2", "--steps", "6", "--scheduler", "slurm", "--out", str(out),
        *small_sets(root), env=env,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    index = json.loads((out / "sweep.json").read_text())
    assert index["scheduler"] == "slurm" and index["failed"] == []
    assert [(r["world_size"], r["run_dir"]) for r in index["runs"]] == [(1, "runs/ws1"), (2, "runs/ws2")]
    per_rank = {}
    for n in (1, 2):
        run_dir = out / "runs" / f"ws{n}"
        launch = json.loads((run_dir / "launch.json").read_text())
        assert launch["scheduler"] == "slurm" and launch["nnodes"] == 1 and launch["args"][5] == str(n)
        job_id = launch["handle"].rsplit("/", 1)[1]
        assert sacct_states(job_id) == {"quickstart-0": "COMPLETED node1"}
        assert (run_dir / "logs" / "slurm" / f"slurm-{job_id}-quickstart-0.err").is_file()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["world_size"], summary["steps"], summary["batch_size"]) == (n, 6, 384 * n)  # weak
        assert [r["step"] for r in records(run_dir, "train")] == list(range(1, 7))
        per_rank[n] = summary["throughput"]["examples_per_s_per_rank"]
        assert per_rank[n] > 0
    rows = {row["world_size"]: row for row in index["efficiency"]}
    assert rows[1]["efficiency"] == 1.0
    assert rows[2]["efficiency"] == pytest.approx(per_rank[2] / per_rank[1])
    assert rows[2]["examples_per_s"] == pytest.approx(2 * per_rank[2])
    assert f"2 ranks: {rows[2]['examples_per_s']:,.0f} examples/s" in proc.stdout
    assert f"weak scaling efficiency {100 * rows[2]['efficiency']:.1f}%" in proc.stdout
    report = (out / "report.md").read_text()
    assert "Scaling efficiency (weak scaling)" in report and f"| {100 * rows[2]['efficiency']:.1f}% |" in report
    print(f"slurm sweep 1,2: {seconds:.1f} s; weak scaling efficiency at 2 ranks {rows[2]['efficiency']:.2f}")
