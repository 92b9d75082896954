"""LSPR on 2 gloo ranks (sharded tables, DDP dense arch, TorchRec pipeline): trains and resumes bit-exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from recscale.modules.build import dense_flops
from recscale.modules.flops import total
from tests.distributed import run_distributed
from tests.trainer.runs import losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_lspr_run_resumes_bit_exactly_with_its_noise(tmp_path):
    """The noise is drawn from torch's global RNG, which checkpoints restore per rank: a run resumed at step 4
    draws the same noise and logs the same losses; the summary counts the dense arch twice per example."""
    cfg = small_job(
        tmp_path / "cache", "model.perturbation.kind=lspr", "model.perturbation.sigma_rel=0.1", "trainer.epochs=1"
    )
    full = new_run(tmp_path, "full", cfg)
    run_distributed(train_worker, 2, cfg, full, False)
    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [5, 6, 7, 8] and all(math.isfinite(v) for v in got.values())
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["flops_per_example"]["train"] == 2 * total(dense_flops(cfg)).train
