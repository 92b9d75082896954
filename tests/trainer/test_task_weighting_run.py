"""A 1-process multi-task run with ESMM and learned task weights: records, metrics, checkpoint, resume, export.

The job is ``multitask_synthetic`` shrunk (click; purchase given a click, here in ESMM form) with
``model.task_weighting: uncertainty``. The log variances move during training, are saved with the dense
checkpoint and restored on resume (the resumed run's losses and weights equal the uninterrupted run's bit
for bit), and the exported artifact still serves one probability per task.
"""

from __future__ import annotations

import json
import math
import shutil

import pyarrow.parquet as pq
import pytest

from recscale.data.prepare import prepare_data
from recscale.serving import predict_file
from recscale.serving.export import export_run
from recscale.sharding.checkpoint.export import dense_weights
from recscale.trainer.run_dir import METRICS
from tests.distributed import run_distributed
from tests.trainer.runs import final_eval, losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.slow]

OVERRIDES = ["trainer.epochs=1", "model.tasks.1.given_mode=esmm", "model.task_weighting=uncertainty"]


def _weights(run_dir):
    """``{step: (exp(-s_click), exp(-s_purchase))}`` of the train records."""
    records = [json.loads(x) for x in (run_dir / METRICS).read_text().splitlines()]
    return {r["step"]: (r["task_weight/click"], r["task_weight/purchase"]) for r in records if r["kind"] == "train"}


def test_esmm_with_learned_weights_trains_checkpoints_resumes_and_exports(tmp_path):
    cfg = small_job(tmp_path / "cache", *OVERRIDES, preset="multitask_synthetic")
    full = new_run(tmp_path, "full", cfg)
    assert run_distributed(train_worker, 1, cfg, full, False) == [8]
    weights = _weights(full)
    assert sorted(weights) == list(range(1, 9))
    assert weights[1] == (1.0, 1.0)  # s = 0 before the first update
    assert all(abs(w - 1.0) > 1e-4 for w in weights[8])  # every s moved
    # the checkpoint after step 4 holds the s that step 5 trained with (records are read before the update)
    saved = dense_weights(full / "checkpoints" / "step_00000004")["log_variance"]
    assert [math.exp(-float(s)) for s in saved] == pytest.approx(list(weights[5]), rel=1e-6)

    metrics = final_eval(full)
    for key in ("auc/purchase_ctcvr", "logloss/purchase_ctcvr", "oracle_auc/purchase_ctcvr", "auc/purchase/feed"):
        assert 0 < metrics[key] < 1.5, key
    assert metrics["num_examples/purchase_ctcvr"] == metrics["num_examples/click"] > metrics["num_examples/purchase"]
    assert "task_weight/click" not in metrics

    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 1, cfg, resumed, True)
    assert losses(resumed) == {s: losses(full)[s] for s in range(5, 9)}
    assert {s: _weights(resumed)[s] for s in range(5, 9)} == {s: weights[s] for s in range(5, 9)}

    export_run(full, "latest", tmp_path / "artifact", "none")
    valid = prepare_data(cfg.data, cfg.embeddings).valid
    predict_file(tmp_path / "artifact", valid, tmp_path / "p.parquet")
    p = pq.read_table(tmp_path / "p.parquet")
    assert p.column_names == ["p_click", "p_purchase"]
