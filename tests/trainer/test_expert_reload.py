"""Through the trainer: an expert-parallel checkpoint (world 2, ep_size 2) evaluates at world 1 and resumes
at ep_size 1 on the uninterrupted run's loss curve (the dense state is mapped across layouts)."""

from __future__ import annotations

import math
import shutil

import pytest

from tests.distributed import run_distributed
from tests.trainer.runs import eval_checkpoint_worker, losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

EP2 = [  # 8 steps in three stages; checkpoints at 4 (inside the expert stage) and 8
    "trainer.stages=[{name: backbone, train: backbone, steps: 2},"
    " {name: experts, train: experts, steps: 3, expert_lr_scale: 2.0},"
    " {name: joint, train: all, steps: 3, backbone_lr_scale: 0.5}]",
    "trainer.max_steps=0",
]


@pytest.fixture(scope="module")
def ep2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep_reload")
    cfg = small_job(root / "cache", *EP2, preset="dcnv2_hilomoe_ep2")
    assert cfg.sharding.ep_size == 2 and cfg.sharding.dense == "deepspeed"
    run_dir = new_run(root, "full", cfg)
    assert run_distributed(train_worker, 2, cfg, run_dir, False) == [8, 8]
    return cfg, run_dir, root


def test_ep2_checkpoint_evaluates_at_world_1_with_the_same_metrics(ep2_run):
    _, full, _ = ep2_run
    checkpoint = full / "checkpoints" / "step_00000008"
    on_two = run_distributed(eval_checkpoint_worker, 2, checkpoint)[0]  # its own layout
    on_one = run_distributed(eval_checkpoint_worker, 1, checkpoint)[0]  # ep_size 1: every expert on the rank
    assert on_one["num_examples"] == on_two["num_examples"] == 1024
    assert math.isclose(on_one["auc"], on_two["auc"], abs_tol=1e-6)
    assert math.isclose(on_one["logloss"], on_two["logloss"], abs_tol=1e-6)


def test_ep2_checkpoint_resumes_at_ep1_on_the_uninterrupted_curve(ep2_run):
    cfg, full, root = ep2_run
    ep1 = small_job(root / "cache", *EP2, "sharding.ep_size=1", preset="dcnv2_hilomoe_ep2")
    resumed = new_run(root, "ep1", ep1)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    assert run_distributed(train_worker, 2, ep1, resumed, True) == [8, 8]
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [5, 6, 7, 8]
    assert [got[s] for s in range(5, 9)] == pytest.approx([expected[s] for s in range(5, 9)], abs=1e-6)
