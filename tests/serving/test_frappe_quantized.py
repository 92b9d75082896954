"""Row-wise quantized tables on real data: AUC on the Frappe valid split against the fp32 artifact's.

Reads ``../shared/data/frappe_x1`` (see the data README); skipped when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.configs import load_config
from recscale.data import convert_csv
from recscale.serving import load
from recscale.serving.export import export_run
from recscale.serving.runtime import predict_file
from tests.distributed import run_distributed
from tests.trainer.runs import new_run, train_worker

FRAPPE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "frappe_x1"

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.skipif(not (FRAPPE / "valid.csv").is_file(), reason=f"Frappe data not at {FRAPPE}"),
]


def auc(p: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney U)."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def frappe(tmp_path_factory):
    """(AUC by --quantize, the run's own final evaluation AUC) of a DCN-V2 trained half an epoch on Frappe."""
    root = tmp_path_factory.mktemp("frappe")
    base = load_config("frappe", [])
    convert_csv([FRAPPE / "train.csv"], root / "data", base.data, base.embeddings, valid_inputs=[FRAPPE / "valid.csv"])
    cfg = load_config(
        "frappe",
        [
            f"data.train_path={root / 'data' / 'train'}",
            f"data.valid_path={root / 'data' / 'valid'}",
            "trainer.max_steps=25",  # half an epoch (batch 4096): AUC 0.92, enough to compare quantizations
            "metrics.tensorboard=false",
            "metrics.progress_bar=never",
        ],
    )
    run_dir = new_run(root, "run", cfg)
    run_distributed(train_worker, 1, cfg, run_dir, False)
    valid = pq.read_table(root / "data" / "valid")
    labels = valid.column("label").to_numpy()
    result, run_auc, scores = {}, None, {}
    for kind in ("none", "fp16", "int8", "int4"):
        manifest = export_run(run_dir, "latest", root / kind, kind)
        run_auc = manifest["metrics"]["auc"]
        scores[kind] = load(root / kind).predict(valid)[:, 0]
        result[kind] = auc(scores[kind].astype(np.float64), labels)
    # the raw CSV, read by the artifact as the converter read it, against the converted rows
    predict_file(root / "none", FRAPPE / "valid.csv", root / "raw.parquet")
    from_raw = pq.read_table(root / "raw.parquet").column("p_label").to_numpy()
    result["raw_max_abs_diff"] = float(np.abs(from_raw - scores["none"]).max())
    return result, run_auc


def test_the_raw_csv_scores_as_its_converted_rows(frappe):
    aucs, _ = frappe
    assert aucs["raw_max_abs_diff"] == 0.0


def test_fp32_artifact_reproduces_the_runs_auc(frappe):
    aucs, run_auc = frappe
    assert aucs["none"] == pytest.approx(run_auc, abs=1e-6)
    assert aucs["none"] > 0.9  # a trained model: the rest of the comparison means something


def test_int8_tables_lose_at_most_5e_4_auc(frappe):
    aucs, _ = frappe
    print({k: round(v, 6) for k, v in aucs.items() if k != "raw_max_abs_diff"})
    assert aucs["none"] - aucs["int8"] <= 0.0005
    assert aucs["none"] - aucs["fp16"] <= 0.0001
    assert aucs["none"] - aucs["int4"] <= 0.01
