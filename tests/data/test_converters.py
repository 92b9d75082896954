"""Converters on the real samples in ../shared/data (skipped when absent), checked against our own parsing."""

import gzip
import json
import math

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from recscale.configs import config_from_dict, load_config
from recscale.data import DataError, ParquetBatchReader, convert_criteo, convert_csv, prepare_data
from recscale.data.hashing import hash_strings, mix64
from tests.data.helpers import shared_data


def criteo_cfg(*overrides):
    return load_config("criteo_kaggle", ["data.convert.valid_fraction=0", *overrides])


def expected_criteo_row(line: str, table_rows: list[int]) -> tuple[int, list[float], list[int]]:
    """Our own reading of one raw Criteo line (independent of the converter's vectorised code)."""
    fields = line.rstrip("\n").split("\t")
    dense = [math.log1p(max(int(v), 0)) if v else 0.0 for v in fields[1:14]]
    ids = []
    for v, rows in zip(fields[14:], table_rows):
        ids.append(0 if not v else 1 + int(mix64(np.array([int(v, 16)], dtype=np.uint64))[0] % np.uint64(rows - 1)))
    return int(fields[0]), dense, ids


def test_criteo_kaggle_sample_converts_line_by_line(tmp_path):
    a = shared_data("criteo_sample", "criteo_raw_100a.tsv")
    b = shared_data("criteo_sample", "criteo_raw_100b.tsv")
    cfg = criteo_cfg()
    stats = convert_criteo([a], tmp_path / "out", cfg.data, cfg.embeddings, valid_inputs=[b], progress=False)
    assert stats["rows"] == {"train": 100, "valid": 100}
    assert stats["skipped_rows"] == 0 and stats["layout"] == "kaggle"
    rows = [t.num_embeddings for t in cfg.embeddings.tables]
    for split, source in (("train", a), ("valid", b)):
        out = pq.read_table(tmp_path / "out" / split).to_pylist()
        lines = source.read_text().splitlines()
        assert len(out) == len(lines)
        for line, row in zip(lines, out):
            label, dense, ids = expected_criteo_row(line, rows)
            assert row["label"] == label
            assert np.allclose([row[f"I{i}"] for i in range(1, 14)], dense, rtol=1e-6)
            assert [row[f"C{i}"] for i in range(1, 27)] == ids
    labels = [int(line.split("\t")[0]) for line in a.read_text().splitlines()]
    assert stats["label_rate"]["train"]["label"] == pytest.approx(np.mean(labels))
    paths = prepare_data(
        load_config(
            "criteo_kaggle", [f"data.train_path={tmp_path}/out/train", f"data.valid_path={tmp_path}/out/valid"]
        ).data,
        cfg.embeddings,
    )
    assert paths.stats == tmp_path / "out" / "schema.json"


def test_criteo_terabyte_layout_gz_gives_the_same_rows(tmp_path):
    a = shared_data("criteo_sample", "criteo_raw_100a.tsv")
    day = tmp_path / "day_0.gz"
    with gzip.open(day, "wb") as f:
        f.write(a.read_bytes())
    cfg = criteo_cfg()
    kaggle = convert_criteo([a], tmp_path / "k", cfg.data, cfg.embeddings, progress=False)
    tb = convert_criteo([day], tmp_path / "t", cfg.data, cfg.embeddings, layout="terabyte", progress=False)
    assert tb["layout"] == "terabyte" and kaggle["layout"] == "kaggle"
    assert pq.read_table(tmp_path / "t" / "train").equals(pq.read_table(tmp_path / "k" / "train"))


def test_criteo_vocab_mode_thresholds_and_is_layout_bound(tmp_path):
    a = shared_data("criteo_sample", "criteo_raw_100a.tsv")
    b = shared_data("criteo_sample", "criteo_raw_100b.tsv")
    cfg = criteo_cfg("data.convert.categorical=vocab", "data.convert.min_count=3")
    stats = convert_criteo([a], tmp_path / "v", cfg.data, cfg.embeddings, valid_inputs=[b], progress=False)
    c1 = [line.split("\t")[14] for line in a.read_text().splitlines()]
    counts = {v: c1.count(v) for v in set(c1) if v}
    frequent = sorted((v for v in counts if counts[v] >= 3), key=lambda v: (-counts[v], int(v, 16)))
    got = pq.read_table(tmp_path / "v" / "train", columns=["C1"]).column("C1").to_pylist()
    want = [0 if not v else (2 + frequent.index(v) if v in frequent else 1) for v in c1]
    assert got == want
    assert stats["features"]["C1"]["rows_needed"] == len(frequent) + 2
    assert stats["features"]["C1"]["distinct_values"] == len(counts)
    # valid rows are encoded with the training vocabulary (unseen values -> OOV row 1)
    valid_c1 = [line.split("\t")[14] for line in b.read_text().splitlines()]
    got_valid = pq.read_table(tmp_path / "v" / "valid", columns=["C1"]).column("C1").to_pylist()
    assert got_valid == [0 if not v else (2 + frequent.index(v) if v in frequent else 1) for v in valid_c1]
    # reuse the vocabulary for a later file of the same release; refuse it for the other release
    again = convert_criteo([b], tmp_path / "again", cfg.data, cfg.embeddings, vocab=tmp_path / "v", progress=False)
    assert pq.read_table(tmp_path / "again" / "train", columns=["C1"]).column("C1").to_pylist() == got_valid
    assert again["rows"]["train"] == 100
    with pytest.raises(DataError, match="built from Criteo kaggle data and cannot encode terabyte data"):
        convert_criteo(
            [b], tmp_path / "tb", cfg.data, cfg.embeddings, layout="terabyte", vocab=tmp_path / "v", progress=False
        )


def test_criteo_valid_fraction_split_is_seeded_and_disjoint(tmp_path):
    a = shared_data("criteo_sample", "criteo_raw_100a.tsv")
    cfg = load_config("criteo_kaggle", ["data.convert.valid_fraction=0.3"])
    one = convert_criteo([a], tmp_path / "1", cfg.data, cfg.embeddings, progress=False)
    two = convert_criteo([a], tmp_path / "2", cfg.data, cfg.embeddings, progress=False)
    assert one["rows"] == two["rows"] and one["rows"]["train"] + one["rows"]["valid"] == 100
    assert 15 <= one["rows"]["valid"] <= 45
    assert pq.read_table(tmp_path / "1" / "valid").equals(pq.read_table(tmp_path / "2" / "valid"))


def test_frappe_x1_converts_and_reads_back(tmp_path):
    train = shared_data("frappe_x1", "train.csv")
    valid = shared_data("frappe_x1", "valid.csv")
    cfg = load_config("frappe", [f"data.train_path={tmp_path}/train", f"data.valid_path={tmp_path}/valid"])
    stats = convert_csv([train], tmp_path, cfg.data, cfg.embeddings, valid_inputs=[valid], progress=False)
    raw_train, raw_valid = pa_csv.read_csv(train), pa_csv.read_csv(valid)
    assert stats["rows"] == {"train": raw_train.num_rows, "valid": raw_valid.num_rows}
    assert stats["label_rate"]["valid"]["label"] == pytest.approx(np.mean(raw_valid.column("label").to_numpy()))
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    for feature in cfg.data.features.sparse:
        distinct = len(set(raw_train.column(feature.name).to_pylist()))
        assert stats["features"][feature.name]["rows_needed"] == distinct + 2 == rows[feature.table]
    unseen_users = set(raw_valid.column("user").to_pylist()) - set(raw_train.column("user").to_pylist())
    assert stats["features"]["user"]["oov_values"] == sum(
        u in unseen_users for u in raw_valid.column("user").to_pylist()
    )
    paths = prepare_data(cfg.data, cfg.embeddings)
    reader = ParquetBatchReader(
        paths.valid, cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=8192, mode="eval"
    )
    weights = sum(float(b.weights.sum()) for b in reader)
    assert weights == raw_valid.num_rows


def csv_config(labels, dense, sparse, tables, sequences=(), **convert):
    return config_from_dict(
        {
            "data": {
                "source": "parquet",
                "features": {
                    "labels": labels,
                    "dense": dense,
                    "sparse": [{"name": s, "table": f"t_{tables.get(s, s)}"} for s in sparse],
                    "sequences": list(sequences),
                },
                "convert": convert,
            },
            "embeddings": {
                "tables": [
                    {"name": f"t_{t}", "num_embeddings": 1000} for t in sorted(set([tables.get(s, s) for s in sparse]))
                ]
            },
        }
    )


def test_avazu_sample_hashes_strings(tmp_path):
    path = shared_data("samples", "avazu_raw_100.csv")
    raw = pa_csv.read_csv(
        path, convert_options=pa_csv.ConvertOptions(strings_can_be_null=False, column_types={"hour": "string"})
    )
    sparse = [c for c in raw.column_names if c not in ("id", "click")]
    cfg = csv_config(["click"], [], sparse, {})
    stats = convert_csv([path], tmp_path / "a", cfg.data, cfg.embeddings, progress=False)
    assert stats["rows"]["train"] == 100
    out = pq.read_table(tmp_path / "a" / "train")
    site = [
        str(v)
        for v in pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={"site_id": "string"}))
        .column("site_id")
        .to_pylist()
    ]
    expected = (mix64(hash_strings(site)) % np.uint64(999)).astype(np.int64) + 1
    assert out.column("site_id").to_pylist() == expected.tolist()
    assert out.column("click").to_pylist() == raw.column("click").to_pylist()


def test_ali_ccp_sample_has_two_labels_and_dense_features(tmp_path):
    path = shared_data("samples", "ali_ccp_multitask_100.csv")
    raw = pa_csv.read_csv(path)
    dense = [c for c in raw.column_names if c.startswith("D")]
    sparse = [c for c in raw.column_names if c not in ("click", "purchase") and not c.startswith("D")]
    tables = {s: f"c{s}" for s in sparse}  # column names like 101 are fine as feature names
    cfg = csv_config(["click", "purchase"], dense, sparse, tables)
    convert_csv([path], tmp_path / "ali", cfg.data, cfg.embeddings, progress=False)
    reader = ParquetBatchReader(
        tmp_path / "ali" / "train", cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=100, mode="eval"
    )
    batch = next(iter(reader))
    assert batch.labels.shape == (100, 2)
    assert batch.labels[:, 1].tolist() == [float(v) for v in raw.column("purchase").to_pylist()]
    assert np.allclose(batch.dense.numpy(), np.stack([raw.column(c).to_numpy() for c in dense], 1), atol=1e-6)


def test_taobao_sample_click_sequence_becomes_a_sequence(tmp_path):
    path = shared_data("samples", "taobao_clickseq_100.csv")
    raw = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={"click_sequence": "string"}))
    sequence = {"name": "click", "ids": "click_sequence", "table": "t_adgroup_id", "max_length": 4}
    cfg = csv_config(["clk"], ["price"], ["userid", "adgroup_id", "cate_id", "pid"], {}, [sequence])
    stats = convert_csv([path], tmp_path / "tb", cfg.data, cfg.embeddings, progress=False)
    assert stats["rows"]["train"] == 100
    reader = ParquetBatchReader(
        tmp_path / "tb" / "train", cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=100, mode="eval"
    )
    batch = next(iter(reader))
    histories = [(v or "").split("^") if v else [] for v in raw.column("click_sequence").to_pylist()]
    assert batch.sequences.keys() == ["click"]
    assert batch.sequences.lengths().tolist() == [min(len(h), 4) for h in histories]
    keys = hash_strings([i for h in histories for i in h[-4:]])
    assert batch.sequences.values().tolist() == ((mix64(keys) % np.uint64(999)).astype(np.int64) + 1).tolist()
    # the history and the candidate share the table: the same ad id gives the same row
    ads = [str(v) for v in raw.column("adgroup_id").to_pylist()]
    rows = batch.sparse["adgroup_id"].values().tolist()
    offsets = [0, *np.cumsum(batch.sequences.lengths().tolist())]
    values = batch.sequences.values().tolist()
    matches = [i for i, (ad, h) in enumerate(zip(ads, histories)) if ad in h[-4:]]
    for i in matches:
        assert rows[i] in values[offsets[i] : offsets[i + 1]]


def test_schema_json_records_what_was_done(tmp_path):
    a = shared_data("criteo_sample", "criteo_raw_100a.tsv")
    cfg = criteo_cfg()
    convert_criteo([a], tmp_path / "s", cfg.data, cfg.embeddings, progress=False)
    stats = json.loads((tmp_path / "s" / "schema.json").read_text())
    assert stats["format"] == "criteo_tsv"
    assert stats["convert"]["categorical"] == "hash"
    missing_i1 = sum(1 for line in a.read_text().splitlines() if line.split("\t")[1] == "")
    assert stats["dense_missing"]["I1"] == missing_i1
    assert stats["features"]["C3"]["table_rows"] == cfg.embeddings.tables[2].num_embeddings


def test_output_row_groups_and_files_follow_the_convert_settings(tmp_path):
    from tests.data.test_bad_input import csv_config, csv_file, csv_rows

    path = csv_file(tmp_path / "f.csv", csv_rows(200))
    cfg = csv_config("data.convert.row_group_size=30", "data.convert.rows_per_file=100")
    convert_csv([path], tmp_path / "o", cfg.data, cfg.embeddings, progress=False)
    files = sorted((tmp_path / "o" / "train").glob("*.parquet"))
    groups = [
        [pq.ParquetFile(f).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(f).num_row_groups)]
        for f in files
    ]
    assert groups == [[30, 30, 30, 30], [30, 30, 20]]
    assert pq.read_table(tmp_path / "o" / "train").column("label").to_pylist() == [i % 2 for i in range(200)]
    assert not (tmp_path / "o" / "valid").exists()
