"""Raw CSV / Criteo TSV at serving time: ``serve.py`` reads text rows exactly as the converter did.

Each case converts real rows with ``recscale data convert``'s functions, then reads the same file with
the artifact runtime's ``raw_batches`` and requires the same dense values (bit for bit) and the same
table rows as the Parquet the converter wrote: Criteo hex ids hashed and through a vocabulary, Frappe
CSV strings through a vocabulary, with empty values. No model is trained here (the Frappe
end-to-end check is in test_frappe_quantized.py).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.configs import load_config
from recscale.data import convert_criteo, convert_csv
from recscale.serving.conversion import raw_spec
from recscale.serving.runtime import ServingError, raw_batches
from tests.data.test_bad_input import criteo_lines, replace_field
from tests.serving.test_frappe_quantized import FRAPPE


def _features(cfg, artifact: Path) -> dict:
    """A features.json as export writes it, and the vocab copy beside it."""
    spec, vocab = raw_spec(cfg)
    assert spec is not None
    if vocab is not None:
        shutil.copytree(vocab, artifact / "vocab")
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    sparse = [
        {"name": f.name, "table": f.table, "rows": rows[f.table], "hashing": f.hashing, "max_ids": 1}
        for f in cfg.data.features.sparse
    ]
    return {
        "labels": list(cfg.data.features.labels),
        "dense": list(cfg.data.features.dense),
        "sparse": sparse,
        "raw": spec,
    }


def _assert_same_as_converted(source: Path, out: Path, features: dict, artifact: Path) -> int:
    blocks = list(raw_batches(source, artifact, features, block_mb=1))
    converted = pq.read_table(out / "train")
    for name in features["dense"]:
        got = np.concatenate([b[name] for b, _ in blocks])
        assert np.array_equal(got, converted.column(name).to_numpy()), name
    for spec in features["sparse"]:
        got = np.concatenate([b[spec["name"]] for b, _ in blocks])
        assert np.array_equal(got, converted.column(spec["name"]).to_numpy()), spec["name"]
    return converted.num_rows


@pytest.mark.parametrize("categorical", ["hash", "vocab"])
def test_criteo_tsv_rows_read_as_the_converter_read_them(tmp_path, categorical):
    lines = criteo_lines(100) + criteo_lines(100, sample=1)
    lines[3] = replace_field(lines[3], 2, "")  # an empty integer: dense_missing
    lines[5] = replace_field(lines[5], 20, "")  # an empty categorical: row 0
    source = tmp_path / "day_0.gz"
    source.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    sets = ["data.convert.valid_fraction=0", f"data.convert.categorical={categorical}"]
    base = load_config("criteo_kaggle", sets)
    convert_criteo([source], tmp_path / "out", base.data, base.embeddings, progress=False)
    cfg = load_config(
        "criteo_kaggle",
        [*sets, f"data.train_path={tmp_path / 'out' / 'train'}", f"data.valid_path={tmp_path / 'out' / 'valid'}"],
    )
    (tmp_path / "artifact").mkdir()
    features = _features(cfg, tmp_path / "artifact")
    assert features["raw"]["format"] == "criteo_tsv" and features["raw"]["dense_transform"] == "log1p"
    assert _assert_same_as_converted(source, tmp_path / "out", features, tmp_path / "artifact") == 200

    unlabelled = tmp_path / "test.txt"  # Kaggle's test.txt: the same rows without the label field
    unlabelled.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    blocks = list(raw_batches(unlabelled, tmp_path / "artifact", features))
    assert np.array_equal(blocks[0][0]["C7"], pq.read_table(tmp_path / "out" / "train").column("C7").to_numpy())

    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([lines[0], replace_field(lines[1], 16, "0x12")]) + "\n")
    with pytest.raises(ServingError, match=r"bad.tsv: line 2: column 'C3': '0x12' is not a hexadecimal id"):
        list(raw_batches(bad, tmp_path / "artifact", features))


@pytest.mark.skipif(not (FRAPPE / "valid.csv").is_file(), reason=f"Frappe data not at {FRAPPE}")
def test_frappe_csv_rows_read_as_the_converter_read_them(tmp_path):
    text = (FRAPPE / "valid.csv").read_text().splitlines()[:3001]
    source = tmp_path / "rows.csv"
    source.write_text("\n".join(text) + "\n")
    base = load_config("frappe", [])
    convert_csv([source], tmp_path / "out", base.data, base.embeddings, progress=False)
    cfg = load_config(
        "frappe", [f"data.train_path={tmp_path / 'out' / 'train'}", f"data.valid_path={tmp_path / 'out' / 'valid'}"]
    )
    (tmp_path / "artifact").mkdir()
    features = _features(cfg, tmp_path / "artifact")
    assert features["raw"]["categorical"] == "vocab" and features["raw"]["delimiter"] == ","
    assert _assert_same_as_converted(source, tmp_path / "out", features, tmp_path / "artifact") == 3000

    header = text[0].split(",")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(",".join(h for h in header if h != "item") + "\n")
    with pytest.raises(ServingError, match=r"wrong.csv: column 'item' is missing; the header has "):
        list(raw_batches(wrong, tmp_path / "artifact", features))
