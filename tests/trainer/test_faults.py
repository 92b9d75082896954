"""Faults: a hung rank fails the job in time and is named; a rank dying mid-save leaves no complete checkpoint."""

from __future__ import annotations

import json
import os
import time

import pytest

from recscale.trainer.checkpoint import CheckpointManager
from recscale.trainer.faults import DROPPED, Fault, fault_from_env, restart_attempt, rewind_metrics
from recscale.trainer.loop import train
from tests.distributed import run_distributed
from tests.launch.helpers import recscale, small_sets
from tests.trainer.runs import new_run, small_job


def test_fault_variables():
    assert fault_from_env({}) is None
    assert fault_from_env({"RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "5"}) == Fault(1, 5, "kill")
    hang = {"RECSCALE_FAULT_RANK": "0", "RECSCALE_FAULT_STEP": "2", "RECSCALE_FAULT_KIND": "hang"}
    assert fault_from_env(hang) == Fault(0, 2, "hang")
    with pytest.raises(ValueError, match="RECSCALE_FAULT_STEP"):
        fault_from_env({"RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "five"})
    with pytest.raises(ValueError, match="RECSCALE_FAULT_KIND"):
        fault_from_env({"RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "5", "RECSCALE_FAULT_KIND": "segv"})
    assert restart_attempt({"TORCHELASTIC_RESTART_COUNT": "2"}) == 2
    assert restart_attempt({"SLURM_RESTART_COUNT": "1"}) == 1 and restart_attempt({}) == 0


def test_rewind_keeps_the_resumed_trajectory_only(tmp_path):
    lines = [
        {"kind": "train", "step": 3},
        {"kind": "train", "step": 4},
        {"kind": "eval", "step": 4, "final": False},
        {"kind": "checkpoint", "step": 4},
        {"kind": "stage", "step": 4},
        {"kind": "train", "step": 5},
        {"kind": "eval", "step": 6, "final": True},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + '\n{"kind": "tr')
    assert rewind_metrics(tmp_path, 4, tmp_path / "checkpoints/step_00000004", attempt=1) == 4
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in kept] == [
        ("train", 3),
        ("train", 4),
        ("eval", 4),
        ("checkpoint", 4),
        ("restart", 4),
    ]
    assert kept[-1]["dropped_records"] == 4 and kept[-1]["attempt"] == 1
    assert len((tmp_path / DROPPED).read_text().splitlines()) == 4


@pytest.mark.integration
def test_a_hung_rank_fails_the_job_within_the_timeout_naming_it(tmp_path):
    start = time.monotonic()
    proc = recscale(
        "train",
        "quickstart",
        "--nproc",
        "2",
        *small_sets(tmp_path),
        "--set",
        "trainer.collective_timeout_s=5",  # as the 2-rank test below, which trains through a checkpoint with it
        env={"RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "5", "RECSCALE_FAULT_KIND": "hang"},
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert proc.returncode != 0
    assert seconds < 60, f"the hang took {seconds:.0f} s to fail"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    reason = lines[-1]  # the job's one error line: the first rank to fail, and why
    assert reason.startswith("recscale train: error: rank 0 failed: "), proc.stderr
    assert "did not complete within 5 s (trainer.collective_timeout_s)" in reason
    assert "rank 1 (last finished step 4" in reason and "did not arrive" in reason
    print(f"hung rank detected and the job failed in {seconds:.1f} s")


def _train_rank1_dies_while_saving(rank, world, cfg, run_dir):
    from recscale.sharding.checkpoint import writer

    real_write = writer._HashingStream.write

    def write(self, data):
        if rank == 1 and "step_00000008.tmp" in self._file.name:  # half of its first write, then gone
            view = memoryview(data).cast("B")
            real_write(self, view[: len(view) // 2])
            self.flush()
            os._exit(9)
        return real_write(self, data)

    writer._HashingStream.write = write
    return train(cfg, run_dir)


@pytest.mark.distributed
def test_a_rank_dying_mid_save_leaves_no_complete_looking_checkpoint(tmp_path):
    cfg = small_job(tmp_path / "cache", "trainer.collective_timeout_s=5")
    run_dir = new_run(tmp_path, "run", cfg)
    with pytest.raises(Exception, match="exit code 9|died"):  # the harness reports the dead rank
        run_distributed(_train_rank1_dies_while_saving, 2, cfg, run_dir, timeout_s=120)
    root = run_dir / "checkpoints"
    assert (root / "step_00000008.tmp").is_dir() and not (root / "step_00000008").exists()
    assert (root / "step_00000008.tmp" / "__1_0.distcp").is_file()  # rank 1's half-written shard file
    assert not (root / "step_00000008.tmp" / "manifest.json").exists()
    manager = CheckpointManager(run_dir, cfg.checkpoint, 0, 1)
    assert [p.name for p in manager.list_complete()] == ["step_00000004"]
    assert manager.verify(root / "step_00000004") == [] and manager.latest_valid().name == "step_00000004"
