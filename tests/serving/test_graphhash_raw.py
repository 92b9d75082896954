"""Raw CSV rows through ``serve.py`` with GraphHash fields: the same table rows as the converter wrote.

A converted dataset with ``data.convert.fields`` (double GraphHash on the user, GraphHash on the item, modulo
on a context field) is read back by the artifact runtime's ``raw_batches`` from the raw text, with the
``graphhash/`` maps copied as export copies them; unseen users (valid rows) must land on the same cold rows.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq

from recscale.configs import load_config
from recscale.data import convert_csv
from recscale.serving.conversion import graphhash_dir
from recscale.serving.runtime import raw_batches
from tests.data.helpers import shared_data
from tests.data.test_graphhash import tiny_config, tiny_csv
from tests.serving.test_raw_input import _features


def _assert_parity(cfg, source, split, artifact) -> dict:
    """Every sparse column of ``split`` equals what ``raw_batches`` reads from ``source``."""
    graphs = graphhash_dir(cfg)
    assert graphs is not None and graphs.name == "graphhash"
    artifact.mkdir()
    shutil.copytree(graphs, artifact / "graphhash")  # as recscale export does
    features = _features(cfg, artifact)
    blocks = list(raw_batches(source, artifact, features, block_mb=1))
    converted = pq.read_table(graphs.parent / split)
    for spec in features["sparse"]:
        got = np.concatenate([b[spec["name"]] for b, _ in blocks])
        assert np.array_equal(got, converted.column(spec["name"]).to_numpy()), spec["name"]
    return features


def test_tiny_csv_with_double_graphhash_reads_back_row_for_row(tmp_path):
    tiny_csv(tmp_path / "train.csv")
    tiny_csv(tmp_path / "valid.csv", rows=60, seed=3)
    text = (tmp_path / "valid.csv").read_text().splitlines()
    text[1] = "0,new_user,new_item,999"  # unseen everywhere: cold rows, and ctx by modulo
    (tmp_path / "valid.csv").write_text("\n".join(text) + "\n")
    cfg = tiny_config(tmp_path)
    convert_csv(
        [tmp_path / "train.csv"],
        tmp_path / "out",
        cfg.data,
        cfg.embeddings,
        valid_inputs=[tmp_path / "valid.csv"],
        progress=False,
    )
    _assert_parity(cfg, tmp_path / "train.csv", "train", tmp_path / "artifact_train")
    features = _assert_parity(cfg, tmp_path / "valid.csv", "valid", tmp_path / "artifact_valid")
    assert features["raw"]["remap"]["user_hash"] == {"remap": "hash", "rows": 10, "source": "user"}
    assert features["raw"]["remap"]["item"]["remap"] == "graphhash"


def test_frappe_rows_with_graphhash_read_back_row_for_row(tmp_path):
    frappe = shared_data("frappe_x1", "valid.csv")
    (tmp_path / "rows.csv").write_text("\n".join(frappe.read_text().splitlines()[:5001]) + "\n")
    sets = [
        "data.convert.fields={user: {remap: graphhash}, item: {remap: modulo}}",
        "data.convert.graphhash={user: user, item: item, resolution: 5.0, seed: 1}",
    ]
    base = load_config("frappe", sets)
    convert_csv([tmp_path / "rows.csv"], tmp_path / "out", base.data, base.embeddings, progress=False)
    out = tmp_path / "out"
    cfg = load_config("frappe", [*sets, f"data.train_path={out / 'train'}", f"data.valid_path={out / 'valid'}"])
    features = _assert_parity(cfg, tmp_path / "rows.csv", "train", tmp_path / "artifact")
    assert features["raw"]["categorical"] == "vocab" and set(features["raw"]["remap"]) == {"user", "item"}
