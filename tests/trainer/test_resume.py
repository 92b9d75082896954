"""Checkpoint / resume: exact continuation on CPU, and resharding to other world sizes."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from recscale.configs import JobConfig
from recscale.sharding.checkpoint import read_manifest
from recscale.trainer.checkpoint import CheckpointManager
from tests.distributed import run_distributed
from tests.trainer.runs import eval_checkpoint_worker, final_eval, losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cfg = small_job(root / "cache")
    run_dir = new_run(root, "full", cfg)
    assert run_distributed(train_worker, 2, cfg, run_dir, False) == [16, 16]  # 8 steps per epoch, 2 epochs
    return cfg, run_dir, root


def test_checkpoints_are_complete_and_verified(uninterrupted):
    _, run_dir, _ = uninterrupted
    manager = CheckpointManager(run_dir, uninterrupted[0].checkpoint, 0, 2)
    names = [p.name for p in manager.list_complete()]
    assert names == ["step_00000004", "step_00000008", "step_00000012", "step_00000016"]
    for path in manager.list_complete():
        assert CheckpointManager.verify(path) == []
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_resumed_run_equals_uninterrupted_bit_exactly(uninterrupted):
    cfg, full, root = uninterrupted
    resumed = new_run(root, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == list(range(5, 17))  # it continued at step 5, across the epoch boundary at 8
    assert [got[s] for s in range(5, 17)] == [expected[s] for s in range(5, 17)]
    assert final_eval(resumed)["auc"] == final_eval(full)["auc"]


def test_damaged_latest_checkpoint_falls_back_to_the_previous(uninterrupted, caplog):
    cfg, full, root = uninterrupted
    run_dir = new_run(root, "damaged", cfg)
    for step in ("step_00000004", "step_00000008"):
        shutil.copytree(full / "checkpoints" / step, run_dir / "checkpoints" / step)
    victim = next((run_dir / "checkpoints" / "step_00000008").glob("*.distcp"))
    victim.write_bytes(victim.read_bytes()[:-7])  # truncated
    manager = CheckpointManager(run_dir, cfg.checkpoint, 0, 1)
    assert any("truncated" in p for p in CheckpointManager.verify(run_dir / "checkpoints" / "step_00000008"))
    with caplog.at_level("WARNING"):
        assert manager.latest_valid().name == "step_00000004"
    assert victim.name in caplog.text


def test_checkpoint_of_two_ranks_loads_on_other_world_sizes(uninterrupted):
    """Evaluated on 1 and 3 ranks it is the same model as on 2; training goes on from it on 3 (on 1: the
    chain test below)."""
    cfg, full, root = uninterrupted
    checkpoint = full / "checkpoints" / "step_00000008"
    on_two = run_distributed(eval_checkpoint_worker, 2, checkpoint)[0]
    for world in (1, 3):
        here = run_distributed(eval_checkpoint_worker, world, checkpoint)[0]
        assert here["num_examples"] == on_two["num_examples"] == 1024, world
        assert math.isclose(here["auc"], on_two["auc"], abs_tol=1e-6), world
        assert math.isclose(here["logloss"], on_two["logloss"], abs_tol=1e-6), world
    run_dir = new_run(root, "reshard3", cfg)
    shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name)
    assert run_distributed(train_worker, 3, cfg, run_dir, True)[0] == 16
    assert all(math.isfinite(v) for v in losses(run_dir).values())


def test_resume_across_world_sizes_two_then_one_then_three(uninterrupted):
    """A 2-rank checkpoint resumed on 1 rank, whose own checkpoint is then resumed on 3 ranks."""
    cfg, full, root = uninterrupted
    on_one = new_run(root, "chain1", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", on_one / "checkpoints" / "step_00000004")
    assert run_distributed(train_worker, 1, cfg, on_one, True) == [16]
    written_on_one = on_one / "checkpoints" / "step_00000012"
    assert read_manifest(written_on_one)["world_size"] == 1
    on_three = new_run(root, "chain3", cfg)
    shutil.copytree(written_on_one, on_three / "checkpoints" / written_on_one.name)
    assert run_distributed(train_worker, 3, cfg, on_three, True) == [16, 16, 16]
    got = losses(on_three)
    assert sorted(got) == [13, 14, 15, 16] and all(math.isfinite(v) for v in got.values())
    # and the 1-rank checkpoint holds the same model read on 3 ranks as on 1
    here, there = (run_distributed(eval_checkpoint_worker, w, written_on_one)[0] for w in (1, 3))
    assert math.isclose(here["auc"], there["auc"], abs_tol=1e-6)
    assert math.isclose(here["logloss"], there["logloss"], abs_tol=1e-6)


@pytest.mark.parametrize(("zero", "precision"), [(1, "fp32"), (2, "bf16")])  # ZeRO 2 fp32: test_expert_checkpoint
def test_deepspeed_dense_resume_is_exact(tmp_path, zero, precision):
    """Through the one checkpoint format: ZeRO 1/2 fragments, bf16 weights with fp32 masters and Adam
    moments in partitions, each rank writing only its own partition."""
    cfg = small_job(
        tmp_path / "cache",
        "sharding.dense=deepspeed",
        f"sharding.zero_stage={zero}",
        f"trainer.precision={precision}",
        "trainer.epochs=1",
    )
    full = new_run(tmp_path, "full", cfg)
    run_distributed(train_worker, 2, cfg, full, False)
    checkpoint = full / "checkpoints" / "step_00000004"
    files = read_manifest(checkpoint)["files"]
    assert sorted(files) == [".metadata", "__0_0.distcp", "__1_0.distcp", "trainer/rank0.json", "trainer/rank1.json"]
    assert [p.name for p in checkpoint.iterdir() if p.is_dir()] == ["trainer"]  # no second copy of anything
    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [5, 6, 7, 8]  # it resumed (a skipped checkpoint would start again at 1)
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]


def test_a_column_wise_table_with_row_wise_adagrad_evaluates_and_resumes_on_fewer_ranks(tmp_path):
    """Row-wise Adagrad keeps one momentum per row of each column shard. Evaluation needs no optimizer
    state: a 2-rank checkpoint with a 2-shard column-wise table evaluates on 1 rank as on 2. Training
    resumed on 1 rank (one shard) keeps the table's weights and starts its momentum fresh (a warning names it)."""
    others = ", ".join(
        f"{t}: {{type: table_wise}}" for t in ("t_item", "t_category", *(f"t_context_{i}" for i in range(5)))
    )

    def job(ranks: str, steps: int) -> JobConfig:  # t_user column-wise over ``ranks``, the rest table-wise
        manual = f"sharding.manual={{t_user: {{type: column_wise, ranks: {ranks}}}, {others}}}"
        return small_job(tmp_path / "cache", manual, f"trainer.max_steps={steps}", "embeddings.dim=16")

    cfg = job("[0, 1]", 4)
    run_dir = new_run(tmp_path, "cw", cfg)
    run_distributed(train_worker, 2, cfg, run_dir, False)
    plan = json.loads((run_dir / "plan.json").read_text())
    user = next(t for t in plan["tables"] if t["table"] == "t_user")
    assert user["sharding_type"] == "column_wise" and len(user["shards"]) == 2, user
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    on_two = run_distributed(eval_checkpoint_worker, 2, checkpoint)[0]
    on_one = run_distributed(eval_checkpoint_worker, 1, checkpoint)[0]
    assert math.isclose(on_one["auc"], on_two["auc"], abs_tol=1e-6)
    assert math.isclose(on_one["logloss"], on_two["logloss"], abs_tol=1e-6)

    one = job("[0]", 8)
    resumed = new_run(tmp_path, "cw1", one)
    shutil.copytree(checkpoint, resumed / "checkpoints" / checkpoint.name)
    assert run_distributed(train_worker, 1, one, resumed, True) == [8]
    assert all(math.isfinite(v) for v in losses(resumed).values())
    assert 5 in losses(resumed) and 4 not in losses(resumed)  # it went on from step 4
