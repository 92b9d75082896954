"""``recscale cancel HANDLE`` of a local_cwd job: the launch that runs it stops its ranks and records the end.

(The Slurm case is in ``test_slurm.py``, on the real cluster.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.launch.helpers import RECSCALE, ROOT, in_process, records, recscale, small_sets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rank_processes(run_dir: Path) -> list[int]:
    """Processes whose command line names ``run_dir`` (the job's torchrun and ranks)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(run_dir).encode() in cmdline and int(proc.name) != os.getpid():
                found.append(int(proc.name))
    return found


def test_cancel_stops_a_running_local_cwd_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECSCALE_STATE_DIR": str(tmp_path / "state")}
    long_job = [*small_sets(tmp_path), "--set", "trainer.epochs=500", "--set", "checkpoint.every_steps=0"]
    launcher = subprocess.Popen(
        [*RECSCALE, "launch", "quickstart", "-s", "local_cwd", "-j", "1x2", *long_job],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert launcher.stdout is not None
        handle = launcher.stdout.readline().strip()
        assert handle.startswith("local_cwd://"), handle
        run_dir = Path(next(p for p in (tmp_path / "runs").iterdir()))
        deadline = time.monotonic() + 180
        while not ((run_dir / "metrics.jsonl").exists() and records(run_dir, "train")):
            assert launcher.poll() is None and time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.2)
        assert _rank_processes(run_dir)

        cancel = recscale("cancel", handle, env={"RECSCALE_STATE_DIR": env["RECSCALE_STATE_DIR"]})
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert cancel.stdout.strip() == f"{handle}: CANCELLED"
        assert launcher.wait(timeout=60) == 130  # the launch was interrupted, as by Ctrl-C
        deadline = time.monotonic() + 30
        while _rank_processes(run_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _rank_processes(run_dir) == []  # torchrun and both ranks are gone
        steps = [r["step"] for r in records(run_dir, "train")]
        assert steps[-1] < 500 * 8  # stopped long before the end
        assert not (run_dir / "summary.json").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()

    monkeypatch.setenv("RECSCALE_STATE_DIR", env["RECSCALE_STATE_DIR"])  # the job has ended: ask in this process
    status = in_process(capfd, "status", handle)
    said = f"exit {status.returncode}\n{status.stdout}\n{status.stderr}"
    assert f"{handle}: CANCELLED (recorded by the recscale launch that ran it)" in status.stdout, said
    again = in_process(capfd, "cancel", handle)
    assert again.returncode == 0 and again.stdout.strip() == f"{handle}: already ended CANCELLED"
    assert json.loads((run_dir / "launch.json").read_text())["launcher_pid"] == launcher.pid


def test_cancel_of_an_unknown_handle_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSCALE_STATE_DIR", str(tmp_path / "state"))
    proc = in_process(capfd, "cancel", "local_cwd://torchx/nothing-here")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "recscale cancel: error: local_cwd://torchx/nothing-here: no recscale launch process is recorded for this job"
    ]
    proc = in_process(capfd, "cancel", "not a handle")
    assert proc.returncode == 2 and "not a TorchX app handle" in proc.stderr
