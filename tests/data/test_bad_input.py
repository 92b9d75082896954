"""Every bad input names where it is (file, row group / line, row, column), or is skipped and counted."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recscale.configs import load_config
from recscale.configs.schema import DataConfig, SparseFeatureConfig
from recscale.data import DataError, convert_criteo, convert_csv, prepare_data
from recscale.data.errors import BadRowCounter
from recscale.data.text_source import TextBlocks
from tests.data.helpers import embeddings, features, make_reader, shared_data, table


def write(path, t, row_group_size=50):
    pq.write_table(t, path, row_group_size=row_group_size)
    return path


def with_value(t: pa.Table, column: str, row: int, value) -> pa.Table:
    values = t.column(column).to_pylist()
    values[row] = value
    index = t.schema.get_field_index(column)
    return t.set_column(index, column, pa.array(values, type=t.schema.field(column).type))


# ------------------------------------------------------------------------------------------ Parquet


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet" * 10)
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        make_reader(path)


def test_a_truncated_file_is_named(tmp_path):
    good = write(tmp_path / "good.parquet", table(300))
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.parquet: not a readable Parquet file \(truncated or corrupt\?\)"):
        make_reader(tmp_path / "cut.parquet")
    with pytest.raises(DataError, match=r"cut\.parquet"):  # also inside a directory, and from prepare_data
        data_cfg = DataConfig(source="parquet", train_path=str(tmp_path), valid_path=str(good), features=features())
        prepare_data(data_cfg, embeddings())


def test_a_corrupt_row_group_is_named_with_its_row_group(tmp_path):
    path = write(tmp_path / "c.parquet", table(400, seed=3), row_group_size=100)
    meta = pq.read_metadata(path)
    column = meta.row_group(2).column(meta.schema.names.index("d1"))
    start = column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(bytes(data))
    reader = make_reader(path, mode="eval", batch_size=100)
    with pytest.raises(DataError, match=r"c\.parquet: row group 2 cannot be read"):
        list(reader)


def test_a_missing_column_is_named_with_the_file(tmp_path):
    write(tmp_path / "m.parquet", table(100).drop_columns(["d1"]))
    with pytest.raises(DataError, match=r"m\.parquet: column 'd1' \(dense\) is missing"):
        make_reader(tmp_path / "m.parquet")


def test_a_column_of_the_wrong_type_is_named(tmp_path):
    t = table(100)
    t = t.set_column(t.schema.get_field_index("a"), "a", pa.array([str(i) for i in range(100)]))
    write(tmp_path / "w.parquet", t)
    with pytest.raises(DataError, match=r"w\.parquet: column 'a' \(sparse\) has type string; expected integer"):
        make_reader(tmp_path / "w.parquet")


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("label", 2, r"column 'label': label 2\.0 is not 0 or 1"),
        ("label", None, r"column 'label': label nan is not 0 or 1"),
        ("d1", float("nan"), r"column 'd1': dense value nan is not finite"),
        ("a", 100, r"column 'a': id 100 is outside table 'ta' \(rows 0\.\.99\) and hashing is 'none'"),
        ("a", -1, r"column 'a': id -1 is outside table 'ta'"),
        ("b", [3, 77], r"column 'b': id 77 is outside table 'tb' \(rows 0\.\.49\)"),
        ("b", [1, None], r"column 'b': a null id inside the list"),
    ],
)
def test_a_bad_value_names_file_row_group_row_and_column(tmp_path, column, value, message):
    path = write(tmp_path / "bad.parquet", with_value(table(300), column, 123, value), row_group_size=50)
    reader = make_reader(path, mode="eval", batch_size=64)
    with pytest.raises(DataError, match=r"bad\.parquet: row group 2, row 23: " + message):
        list(reader)


def test_on_bad_row_skip_counts_and_zero_weights_the_rows(tmp_path):
    t = with_value(with_value(with_value(table(300), "label", 10, 5), "d1", 11, float("inf")), "a", 250, 1000)
    path = write(tmp_path / "skip.parquet", t, row_group_size=50)
    reader = make_reader(path, mode="eval", batch_size=64, on_bad_row="skip")
    batches = list(reader)
    assert len(batches) == reader.num_batches() == 5  # positions and batch counts are unchanged
    weights = np.concatenate([b.weights.numpy() for b in batches])[:300]
    assert np.flatnonzero(weights == 0).tolist() == [10, 11, 250]
    skipped = batches[250 // 64]
    row = 250 % 64
    assert skipped.sparse["a"].lengths()[row] == 0 and skipped.labels[row, 0] == 0
    stats = reader.stats()
    assert stats["skipped_rows"] == 3
    assert stats["skipped_by_reason"] == {"a: id out of range": 1, "d1: non-finite dense": 1, "label: label not 0/1": 1}


def test_skip_counts_come_back_from_loader_workers(tmp_path):
    path = write(tmp_path / "w.parquet", with_value(table(300), "label", 7, 3), row_group_size=50)
    reader = make_reader(path, batch_size=32, on_bad_row="skip", num_workers=2, shuffle=False)
    it = iter(reader)
    next(it)
    assert reader.stats()["skipped_rows"] == 1
    list(it)
    assert reader.stats()["skipped_rows"] == 1


def test_a_bad_value_in_a_loader_worker_reaches_the_training_process(tmp_path):
    path = write(tmp_path / "w.parquet", with_value(table(300), "label", 299, 4), row_group_size=50)
    reader = make_reader(path, batch_size=32, num_workers=2, tail="pad")
    with pytest.raises(DataError, match=r"w\.parquet: row group 5, row 49: column 'label': label 4\.0 is not 0 or 1"):
        list(reader)


def test_atomic_dir_never_leaves_half_a_directory(tmp_path):
    from recscale.data.files import atomic_dir

    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "part").write_text("half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "part").write_text("whole")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "out") as tmp:  # another process won the race
        (tmp / "part").write_text("late")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "part").read_text() == "whole"


def test_prepare_data_catches_out_of_range_ids_from_statistics(tmp_path):
    (tmp_path / "train").mkdir()
    write(tmp_path / "train" / "part.parquet", with_value(table(300), "a", 5, 4000))
    write(tmp_path / "valid.parquet", table(100))
    data_cfg = DataConfig(
        source="parquet",
        train_path=str(tmp_path / "train"),
        valid_path=str(tmp_path / "valid.parquet"),
        features=features(),
    )
    with pytest.raises(DataError, match=r"part\.parquet: row group 0: column 'a': id 4000 is outside table 'ta'"):
        prepare_data(data_cfg, embeddings())
    data_cfg.reader.on_bad_row = "skip"
    prepare_data(data_cfg, embeddings())  # a warning only: the reader will skip those rows
    data_cfg.reader.on_bad_row = "error"
    data_cfg.features.sparse[0] = SparseFeatureConfig(name="a", table="ta", hashing="modulo")
    paths = prepare_data(data_cfg, embeddings())  # with hashing, big ids are fine
    assert paths.train == tmp_path / "train"
    data_cfg.features.oracle = "p"
    with pytest.raises(DataError, match=r"valid\.parquet: column 'p' \(oracle\) is missing"):
        prepare_data(data_cfg, embeddings())
    data_cfg.valid_path = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere: no such Parquet file or directory"):
        prepare_data(data_cfg, embeddings())


# ------------------------------------------------------------------------------------------ Criteo TSV


CRITEO_SAMPLES = ("criteo_raw_100a.tsv", "criteo_raw_100b.tsv")


def criteo_file(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def criteo_lines(n, sample=0):
    """The first ``n`` (at most 100) real Criteo lines of ``../shared/data/criteo_sample`` (skips when absent).

    Read at test time: the data may not be redistributed, so the repository holds none of it.
    """
    lines = shared_data("criteo_sample", CRITEO_SAMPLES[sample]).read_text().splitlines()
    assert n <= len(lines), f"the sample has {len(lines)} lines, the test asks for {n}"
    return lines[:n]


def replace_field(line, index, value):
    fields = line.split("\t")
    fields[index] = value
    return "\t".join(fields)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda line: "\t".join(line.split("\t")[:39]), r"line 7: expected 40 fields separated by tabs, got 39"),
        (lambda line: line + "\textra", r"line 7: expected 40 fields separated by tabs, got 41"),
        (lambda line: replace_field(line, 3, "12x"), r"line 7: column 'I3': '12x' is not an integer"),
        (lambda line: replace_field(line, 19, "zz12ab01"), r"line 7: column 'C6': 'zz12ab01' is not a hexadecimal id"),
        (lambda line: replace_field(line, 0, "2"), r"line 7: column 'label': label '2' is not 0 or 1"),
        (lambda line: replace_field(line, 0, ""), r"line 7: column 'label': label \(empty\) is not 0 or 1"),
    ],
)
def test_a_malformed_criteo_line_names_file_line_and_column(tmp_path, mutate, message):
    lines = criteo_lines(20)
    lines[6] = mutate(lines[6])
    path = criteo_file(tmp_path / "day_0", lines)
    cfg = load_config("criteo_kaggle", ["data.convert.valid_fraction=0"])
    with pytest.raises(DataError, match=r"day_0: " + message):
        convert_criteo([path], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_criteo_skip_mode_counts_every_kind_of_bad_line(tmp_path):
    lines = criteo_lines(50)
    lines[3] = "\t".join(lines[3].split("\t")[:30])
    lines[10] = replace_field(lines[10], 5, "abc")
    lines[20] = replace_field(lines[20], 30, "g0000000")
    lines[30] = replace_field(lines[30], 0, "7")
    path = criteo_file(tmp_path / "train.txt", lines)
    cfg = load_config("criteo_kaggle", ["data.convert.valid_fraction=0", "data.convert.on_bad_row=skip"])
    stats = convert_criteo([path], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    assert stats["rows"] == {"train": 46, "valid": 0}
    assert stats["skipped_rows"] == 4
    assert stats["skipped_by_reason"] == {
        "C17: invalid hex": 1,
        "I5: not an integer": 1,
        "label: label not 0/1": 1,
        "line: expected 40 fields": 1,
    }
    assert json.loads((tmp_path / "out" / "schema.json").read_text())["skipped_rows"] == 4


def test_line_numbers_stay_right_after_skipped_lines(tmp_path):
    lines = ["a\tb", "1", "c\td", "", "e\tf\tg", "h\ti"]
    path = tmp_path / "t.tsv"
    path.write_text("\n".join(lines) + "\n")
    blocks = TextBlocks(path, ["x", "y"], "\t", None, 1, True, BadRowCounter())
    rows = [(first, b.to_pydict()) for b, first in blocks]
    assert rows[0][1]["x"] == ["a", "c", None, "h"]  # lines 2 and 5 have the wrong field count
    assert [blocks.line_of(i) for i in range(4)] == [1, 3, 4, 6]


# ------------------------------------------------------------------------------------------ CSV


def csv_config(*overrides):
    """The quickstart preset's own made-up schema, read from CSV: label, 4 dense, 8 categorical columns."""
    return load_config("quickstart", list(overrides))


DENSE = [f"dense_{i}" for i in range(4)]
CSV_HEADER = ",".join(["label", *DENSE, "user", "item", "category", *(f"context_{i}" for i in range(5))])


def csv_file(path, rows):
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n")
    return path


def csv_rows(n):
    """Made-up rows of the quickstart schema (ids in range for its tables). Tests of real layouts read
    ``../shared/data`` instead: its data may not be copied into the repository."""
    return [f"{i % 2},0.5,{i},-1.25,,{i % 7},{100 + i % 13},{i % 5},3,5,1,2,1" for i in range(n)]


def test_csv_missing_column_is_named(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("label,user,item\n1,2,3\n")
    cfg = csv_config()
    with pytest.raises(DataError, match=r"x\.csv: column 'dense_0' is missing; the header has label, user, item"):
        convert_csv([path], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)


@pytest.mark.parametrize(
    "row,message",
    [
        ("3,0,0,0,0,1,2,3,3,5,1,2,1", r"line 6: column 'label': label '3' is not 0 or 1"),
        ("1,1,2,3", r"line 6: expected 13 fields separated by commas, got 4"),
        ("1,0,0,0,0,x,2,3,3,5,1,2,1", r"line 6: column 'user': 'x' is not an integer"),
        ("1,0,0,0,0,1,99999,3,3,5,1,2,1", r"line 6: column 'item': id 99999 is outside its table"),
    ],
)
def test_a_bad_csv_row_names_file_line_and_column(tmp_path, row, message):
    rows = csv_rows(10)
    rows[4] = row
    path = csv_file(tmp_path / "f.csv", rows)
    cfg = csv_config("data.convert.categorical=integer")
    with pytest.raises(DataError, match=r"f\.csv: " + message):
        convert_csv([path], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
