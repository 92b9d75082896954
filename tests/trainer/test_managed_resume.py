"""Managed-collision tables in real training runs: resumed == uninterrupted, bit for bit, on 2 ranks.

The data draws user ids from 20,000; the managed ``t_user`` table has 256 slots, a round every 3 steps and a
checkpoint every 4, so the checkpoint falls inside a round (ids collected but not yet profiled).
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.distributed import run_distributed
from tests.trainer.runs import final_eval, losses, managed_job, new_run, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_managed_run_resumes_bit_exactly(tmp_path):
    cfg = managed_job(tmp_path)
    full = new_run(tmp_path, "full", cfg)
    assert run_distributed(train_worker, 2, cfg, full, False) == [8, 8]
    assert (full / "checkpoints" / "step_00000004" / "managed").is_dir()
    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == list(range(5, 9))
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]
    assert final_eval(resumed)["auc"] == final_eval(full)["auc"]
    saved = json.loads((full / "checkpoints" / "step_00000004" / "managed" / "rank0.json").read_text())
    assert saved["steps"] == 4  # a round every 3 steps: step 4 is one step into the second round, the case under test
