"""The ``ali_ccp`` preset reads the real Ali-CCP sample: two label columns, 23 categorical, 8 dense.

Reads ``../shared/data/samples/ali_ccp_multitask_100.csv`` at test time (skipped when absent).
"""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from recscale.configs import load_config
from recscale.data import convert_csv
from recscale.modules.build import dense_flops
from recscale.modules.flops import total
from tests.data.helpers import shared_data


def test_the_preset_converts_both_labels_and_every_field_of_the_sample(tmp_path):
    sample = shared_data("samples", "ali_ccp_multitask_100.csv")
    rows = list(csv.DictReader(sample.open()))
    cfg = load_config("ali_ccp", [])
    stats = convert_csv([sample], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    assert stats["rows"] == {"train": 100, "valid": 0}
    table = pq.read_table(tmp_path / "out" / "train")
    for label in ("click", "purchase"):
        assert table.column(label).to_pylist() == [int(r[label]) for r in rows]
        assert stats["label_rate"]["train"][label] == sum(int(r[label]) for r in rows) / 100
    np.testing.assert_allclose(table.column("D508").to_numpy(), [float(r["D508"]) for r in rows], rtol=1e-6)
    item = table.column("205").to_numpy()  # vocab, min_count 2: an item seen once shares the OOV row 1
    counts = Counter(r["205"] for r in rows)
    row_of = {r["205"]: int(i) for r, i in zip(rows, item)}
    assert all(row_of[v] == 1 for v, n in counts.items() if n == 1)
    frequent = [row_of[v] for v, n in counts.items() if n >= 2]
    assert len(set(frequent)) == len(frequent) and min(frequent) >= 2
    assert set(cfg.data.features.labels) == {"click", "purchase"}
    breakdown = dense_flops(cfg)
    assert {k.split("/")[0] for k in breakdown} == {"bottom", "ple", "towers"} and total(breakdown).forward > 0
