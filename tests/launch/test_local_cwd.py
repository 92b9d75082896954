"""``recscale launch --scheduler local_cwd``: the real trainer through TorchX, on one and on two "nodes".

Also the fault-tolerance bar: a rank SIGKILLed in the middle of the run, with ``--max-restarts 1``,
and the job still ends with exactly the per-step losses, evaluation and data position of the
uninterrupted run (bit for bit on CPU).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from recscale.trainer.checkpoint import CheckpointManager
from recscale.trainer.faults import DROPPED
from tests.launch.helpers import in_process, records, recscale, run_dir_of, small_sets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def launch(root, shape, *extra, env=None):
    start = time.monotonic()
    proc = recscale("launch", "quickstart", "-s", "local_cwd", "-j", shape, *small_sets(root), *extra, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc, run_dir_of(proc), time.monotonic() - start


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("local_cwd")


@pytest.fixture(scope="module")
def state(root):
    return {"RECSCALE_STATE_DIR": str(root / "state")}


@pytest.fixture(scope="module")
def one_by_two(root, state):
    return launch(root, "1x2", env=state)


@pytest.fixture(scope="module")
def two_by_one(root, state):
    return launch(root, "2x1", env=state)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def check_run_dir(run_dir, nodes, ranks_per_node):
    for name in ("config.yaml", "plan.json", "metrics.jsonl", "summary.json", "launch.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(losses(run_dir)) == list(range(1, 17))
    names = [p.name for p in CheckpointManager(run_dir, None, 0, 2).list_complete()]
    assert names == [f"step_{s:08d}" for s in (4, 8, 12, 16)]
    for k in range(nodes):  # torchrun's per-rank files of every node, and the scheduler's per-node streams
        rank_logs = sorted((run_dir / "logs" / f"node{k}").rglob("attempt_0/*/stderr.log"))
        assert len(rank_logs) == ranks_per_node, rank_logs
        assert len(list((run_dir / "logs" / "torchx").rglob(f"quickstart/{k}/stderr.log"))) == 1


def test_one_node_two_ranks(one_by_two):
    proc, run_dir, seconds = one_by_two
    handle = proc.stdout.splitlines()[0]
    assert handle.startswith("local_cwd://torchx/quickstart-")
    assert f"{handle}: SUCCEEDED" in proc.stderr
    assert proc.stdout.splitlines()[1].startswith("validation: auc ")
    check_run_dir(run_dir, nodes=1, ranks_per_node=2)
    print(f"local_cwd 1x2: {seconds:.1f} s")


def test_two_nodes_one_rank_each(two_by_one):
    proc, run_dir, seconds = two_by_one
    check_run_dir(run_dir, nodes=2, ranks_per_node=1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (summary["ranks_per_host"], summary["threads_per_rank"]) == (2, 1)  # two "nodes", one machine
    print(f"local_cwd 2x1: {seconds:.1f} s")


def test_status_and_logs_of_a_finished_local_job(one_by_two, state, monkeypatch, capfd):
    proc, run_dir, _ = one_by_two
    handle = proc.stdout.splitlines()[0]
    for name, value in state.items():  # read by the commands when they run (here: in this process)
        monkeypatch.setenv(name, value)
    status = in_process(capfd, "status", handle)
    assert status.returncode == 0, status.stderr
    assert f"{handle}: SUCCEEDED" in status.stdout and f"run directory: {run_dir}" in status.stdout
    logs = in_process(capfd, "logs", handle)
    assert logs.returncode == 0, logs.stderr
    assert any(line.startswith("quickstart/0 ") and "step 16/16" in line for line in logs.stdout.splitlines())
    unknown = in_process(capfd, "status", "local_cwd://torchx/nope")
    assert unknown.returncode == 2 and "unknown to the local_cwd scheduler" in unknown.stderr


@pytest.mark.parametrize("shape", ["1x2", "2x1"])
def test_killed_rank_restarts_and_matches_the_uninterrupted_run(root, state, one_by_two, two_by_one, shape):
    baseline = (one_by_two if shape == "1x2" else two_by_one)[1]
    fault = {**state, "RECSCALE_FAULT_RANK": "1", "RECSCALE_FAULT_STEP": "6", "RECSCALE_FAULT_KIND": "kill"}
    proc, run_dir, seconds = launch(root, shape, "--max-restarts", "1", env=fault)
    print(f"local_cwd {shape} with a SIGKILLed rank and one restart: {seconds:.1f} s")
    assert (run_dir / "faults" / "rank1-step6-kill").exists()  # the fault fired, once
    assert list((run_dir / "logs").rglob("attempt_1/*/stderr.log"))  # torchrun restarted the workers
    restart = records(run_dir, "restart")
    assert [(r["step"], r["attempt"] >= 0) for r in restart] == [(4, True)]  # resumed from step 4's checkpoint
    assert (run_dir / DROPPED).exists()  # step 5's record of the killed attempt was moved out
    # the same trajectory, bit for bit: every step's loss, the final evaluation
    assert losses(run_dir) == losses(baseline)
    final, expected = records(run_dir, "eval")[-1], records(baseline, "eval")[-1]
    assert (final["auc"], final["logloss"], final["num_examples"]) == (
        expected["auc"],
        expected["logloss"],
        expected["num_examples"],
    )
    # no example trained twice or skipped: each rank's reader ends where the uninterrupted one did
    for rank in (0, 1):
        mine = json.loads((run_dir / f"checkpoints/step_00000016/trainer/rank{rank}.json").read_text())
        theirs = json.loads((baseline / f"checkpoints/step_00000016/trainer/rank{rank}.json").read_text())
        assert mine["data"] == theirs["data"]


def test_damaged_latest_checkpoints_fall_back_with_a_warning(one_by_two, tmp_path, caplog):
    run_dir = one_by_two[1]
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    corrupted = next((copy / "checkpoints/step_00000016").glob("*.distcp"))
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    corrupted.write_bytes(bytes(data))
    truncated = copy / "checkpoints/step_00000012/trainer/rank1.json"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    manager = CheckpointManager(copy, None, 0, 1)
    assert any("checksum mismatch" in p for p in manager.verify(copy / "checkpoints/step_00000016"))
    assert any("truncated" in p for p in manager.verify(copy / "checkpoints/step_00000012"))
    with caplog.at_level("WARNING"):
        assert manager.latest_valid().name == "step_00000008"
    assert str(corrupted) in caplog.text and str(truncated) in caplog.text
