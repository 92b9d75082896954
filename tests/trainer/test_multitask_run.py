"""A 2-rank sharded multi-task, multi-domain run: exact resume, per-task metrics, one served output per task.

The job is the ``multitask_synthetic`` preset shrunk (click on every row, purchase given a click, three
domains, PLE over DCN-V2, its experts on the deep MLP's output or on the cross output). The exported
artifact's predictions, scored with scikit-learn on the rows each task applies to, reproduce the run's final
per-task and per-domain metrics: that checks the metrics, the masks and the export together.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.data.prepare import prepare_data
from recscale.serving import predict_file
from recscale.serving.export import export_run
from tests.distributed import run_distributed
from tests.trainer.runs import final_eval, losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module", params=["representation", "interaction"])
def uninterrupted(request, tmp_path_factory):
    """The run, with PLE's experts on DCN-V2's deep MLP output (the default) or on its cross output."""
    root = tmp_path_factory.mktemp(f"multitask-{request.param}")
    experts = f"model.multitask.expert_input={request.param}"
    cfg = small_job(root / "cache", "trainer.epochs=1", experts, preset="multitask_synthetic")
    run_dir = new_run(root, "full", cfg)
    assert run_distributed(train_worker, 2, cfg, run_dir, False) == [8, 8]
    return cfg, run_dir, root


def test_a_multitask_run_resumes_bit_exactly(uninterrupted):
    cfg, full, root = uninterrupted
    resumed = new_run(root, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == list(range(5, 9))
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]
    a, b = final_eval(full), final_eval(resumed)
    per_task = [k for k in a if k.startswith("auc/")]
    assert len(per_task) == 8  # 2 tasks x (all + 3 domains)
    assert {k: b[k] for k in per_task} == {k: a[k] for k in per_task}


def test_the_export_serves_one_output_per_task_matching_the_runs_metrics(uninterrupted, tmp_path):
    from sklearn.metrics import roc_auc_score

    cfg, full, _ = uninterrupted
    export_run(full, "latest", tmp_path / "artifact", "none")
    valid = prepare_data(cfg.data, cfg.embeddings).valid
    predict_file(tmp_path / "artifact", valid, tmp_path / "p.parquet")
    p = pq.read_table(tmp_path / "p.parquet")
    assert p.column_names == ["p_click", "p_purchase"]
    data = pq.read_table(valid)
    click, purchase = data.column("click").to_numpy(), data.column("purchase").to_numpy()
    domain = data.column("surface").to_numpy()
    metrics = final_eval(full)
    names = cfg.data.features.domain_names
    clicked = click == 1
    for task, rows, y in (("click", np.ones_like(clicked), click), ("purchase", clicked, purchase)):
        scores = p.column(f"p_{task}").to_numpy()
        assert metrics[f"auc/{task}"] == pytest.approx(roc_auc_score(y[rows], scores[rows]), abs=2e-6)
        for d, name in enumerate(names):
            where = rows & (domain == d)
            assert metrics[f"auc/{task}/{name}"] == pytest.approx(roc_auc_score(y[where], scores[where]), abs=2e-6)
    assert metrics["num_examples/purchase"] == clicked.sum()
