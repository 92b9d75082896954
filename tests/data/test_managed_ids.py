"""Raw ids for ``collisions: managed`` tables on the data side: the reader passes them through unchanged,
the converter's ``remap: raw`` writes them, and plain tables keep their range checks."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recscale.configs import config_from_dict
from recscale.configs.loader import ConfigError
from recscale.configs.schema import DataConfig, EmbeddingsConfig, TableConfig
from recscale.configs.validate import validate
from recscale.data import DataError, convert_csv, prepare_data
from recscale.data.hashing import hash_strings
from tests.data.helpers import embeddings, features, make_reader, table

RAW_A = [2**40, -5, 10**12, 0, 99, 2**63 - 1]
RAW_B = [[2**40, -5], [], None, [10**12, 3, 4], [-(2**63)], [7]]


def managed_embeddings() -> EmbeddingsConfig:
    return EmbeddingsConfig(
        dim=4,
        tables=[
            TableConfig(name="ta", num_embeddings=100, collisions="managed"),
            TableConfig(name="tb", num_embeddings=50, collisions="managed"),
        ],
    )


def raw_id_file(path):
    t = table(len(RAW_A))
    t = t.set_column(t.schema.get_field_index("a"), "a", pa.array(RAW_A, type=pa.int64()))
    t = t.set_column(t.schema.get_field_index("b"), "b", pa.array(RAW_B, type=pa.list_(pa.int64())))
    pq.write_table(t, path)
    return DataConfig(source="parquet", train_path=str(path), valid_path=str(path), features=features())


def test_managed_table_ids_pass_through_the_reader_unchanged(tmp_path):
    data = raw_id_file(tmp_path / "raw.parquet")
    paths = prepare_data(data, managed_embeddings())  # no statistics check for raw ids
    reader = make_reader(paths.train, mode="eval", batch_size=len(RAW_A), emb=managed_embeddings())
    batch = next(iter(reader))
    assert batch.sparse["a"].values().tolist() == RAW_A
    kept = [bag[:2] if bag else [] for bag in RAW_B]  # max_ids 2 keeps the first two; null = empty bag
    assert batch.sparse["b"].lengths().tolist() == [len(bag) for bag in kept]
    assert batch.sparse["b"].values().tolist() == [i for bag in kept for i in bag]


def test_the_same_ids_on_a_plain_table_are_still_refused(tmp_path):
    data = raw_id_file(tmp_path / "raw.parquet")
    with pytest.raises(DataError, match=r"column 'a': id 9223372036854775807 is outside table 'ta' \(rows 0\.\.99\)"):
        prepare_data(data, embeddings())
    reader = make_reader(tmp_path / "raw.parquet", mode="eval", batch_size=len(RAW_A))
    with pytest.raises(DataError, match=r"row 0: column 'a': id 1099511627776 is outside table 'ta'"):
        next(iter(reader))
    half = EmbeddingsConfig(  # only tb managed: a is still checked, b is not
        dim=4, tables=[TableConfig(name="ta", num_embeddings=100), TableConfig(name="tb", num_embeddings=50)]
    )
    half.tables[1].collisions = "managed"
    with pytest.raises(DataError, match=r"column 'a': id .* is outside table 'ta'"):
        next(iter(make_reader(tmp_path / "raw.parquet", mode="eval", batch_size=len(RAW_A), emb=half)))


# ------------------------------------------------------------------------------------------ converter

USERS = ["alice", "bob", "", "alice", "carol", "dave"]
INT_USERS = ["1099511627776", "-5", "", "1000000000000", "42", "9223372036854775807"]


def write_csv(path, users):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "user", "item"])
        for i, user in enumerate(users):
            writer.writerow([i % 2, user, str(i % 3)])


def converter_config(tmp_path, categorical: str, user_remap: str = "raw", managed: bool = True):
    fields = {"user": {"remap": user_remap}} if user_remap else {}
    return config_from_dict(
        {
            "data": {
                "source": "parquet",
                "train_path": str(tmp_path / "out" / "train"),
                "valid_path": str(tmp_path / "out" / "valid"),
                "features": {
                    "labels": ["label"],
                    "sparse": [{"name": "user", "table": "t_user"}, {"name": "item", "table": "t_item"}],
                },
                "convert": {"categorical": categorical, "fields": fields},
            },
            "embeddings": {
                "dim": 4,
                "tables": [
                    {"name": "t_user", "num_embeddings": 8, "collisions": "managed" if managed else "none"},
                    {"name": "t_item", "num_embeddings": 10},
                ],
            },
        }
    )


@pytest.mark.parametrize("categorical", ["vocab", "integer"])
def test_remap_raw_writes_the_raw_keys_and_they_read_back(tmp_path, categorical):
    users = INT_USERS if categorical == "integer" else USERS
    write_csv(tmp_path / "train.csv", users)
    cfg = converter_config(tmp_path, categorical)
    validate(cfg)
    stats = convert_csv([tmp_path / "train.csv"], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    if categorical == "integer":  # the integer itself as 64 bits; -5 is 2**64 - 5 before the top bit is cleared
        keys = [int(u) % 2**64 if u else 0 for u in users]
    else:  # BLAKE2b of the text; an empty value has key 0
        keys = [int(k) if u else 0 for u, k in zip(users, hash_strings(users))]
    expected = [k & (2**63 - 1) for k in keys]
    got = pq.read_table(tmp_path / "out" / "train").column("user").to_pylist()
    assert got == expected
    assert any(k >= 2**63 for k in keys)  # the top bit is cleared where it was set
    if categorical == "integer":
        assert got == [2**40, 2**63 - 5, 0, 10**12, 42, 2**63 - 1]
    else:
        assert not (tmp_path / "out" / "vocab" / "user.npz").exists()  # no vocabulary for raw ids
        assert (tmp_path / "out" / "vocab" / "item.npz").is_file()
    written = json.loads((tmp_path / "out" / "schema.json").read_text())
    assert stats["remap"]["user"] == written["remap"]["user"]
    assert stats["remap"]["user"] == {"remap": "raw", "table_rows": 8, "distinct_values": len(set(users) - {""})}
    assert "rows_needed" not in stats["features"]["user"]
    reader = make_reader(
        tmp_path / "out" / "train", mode="eval", batch_size=6, emb=cfg.embeddings, feats=cfg.data.features
    )
    batch = next(iter(reader))
    assert batch.sparse["user"].values().tolist() == expected


def test_raw_needs_a_managed_table_and_a_managed_table_needs_raw(tmp_path):
    write_csv(tmp_path / "train.csv", USERS)
    plain = converter_config(tmp_path, "hash", managed=False)
    message = r"data\.convert\.fields\.user\.remap: raw writes raw 64-bit ids, so table 't_user' must have collisions"
    with pytest.raises(ConfigError, match=message):
        validate(plain)
    with pytest.raises(ConfigError, match=message):
        convert_csv([tmp_path / "train.csv"], tmp_path / "out", plain.data, plain.embeddings, progress=False)
    for remap in ("", "modulo"):
        hashed = converter_config(tmp_path, "hash", user_remap=remap)
        validate(hashed)  # a training job on converted data needs no data.convert.fields
        got = "none \\(the categorical encoding\\)" if not remap else remap
        with pytest.raises(
            ConfigError,
            match=rf"data\.convert\.fields\.user\.remap: table 't_user' is managed .* \(expected raw, got {got}\)",
        ):
            convert_csv([tmp_path / "train.csv"], tmp_path / "out", hashed.data, hashed.embeddings, progress=False)
    assert not (tmp_path / "out").exists()
