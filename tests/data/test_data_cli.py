"""``recscale data ...`` through an argparse parser built with ``data_cli.register``."""

import argparse
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.configs import load_config
from recscale.data import DataError
from recscale.launch import data_cli
from tests.data.helpers import shared_data
from tests.data.test_bad_input import criteo_file, criteo_lines


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="recscale")
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.register(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_synth_writes_data_and_prints_its_claims(tmp_path, capsys):
    out = tmp_path / "synth"
    code = run(
        "data",
        "synth",
        "quickstart",
        "--set",
        "data.synthetic.num_train=5000",
        "--set",
        "data.synthetic.num_valid=5000",
        "--out",
        str(out),
    )
    assert code == 0
    claims = json.loads(capsys.readouterr().out)
    assert claims["rows"] == {"train": 5000, "valid": 5000}
    assert 0.5 < claims["oracle_auc_valid"]["label"] < 1
    assert pq.read_table(out / "valid").num_rows == 5000


def test_synth_without_out_fills_the_cache(tmp_path, capsys):
    code = run(
        "data",
        "synth",
        "quickstart",
        "--set",
        "data.synthetic.num_train=3000",
        "--set",
        "data.synthetic.num_valid=3000",
        "--set",
        f"data.cache_dir={tmp_path}",
    )
    assert code == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    assert json.loads(capsys.readouterr().out)["rows"]["train"] == 3000


def test_convert_criteo_then_inspect(tmp_path, capsys):
    day = criteo_file(tmp_path / "day_0", criteo_lines(100))
    valid = criteo_file(tmp_path / "day_1", criteo_lines(50, sample=1))
    out = tmp_path / "criteo"
    code = run(
        "data",
        "convert",
        "criteo",
        str(day),
        "--valid",
        str(valid),
        "--out",
        str(out),
        "--layout",
        "terabyte",
        "--no-progress",
    )
    assert code == 0
    # with --valid files, no share of the training inputs goes to valid/ (the preset's fraction is not 0)
    assert load_config("criteo_kaggle", []).data.convert.valid_fraction > 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 100, "valid": 50}
    assert run("data", "inspect", str(out)) == 0
    text = capsys.readouterr().out
    assert "train: " in text and "100 rows" in text and "C26: int64" in text and '"layout": "terabyte"' in text
    assert run("data", "inspect", str(out / "valid"), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 50 and info["columns"]["I1"] == "float" and info["stats"]["format"] == "criteo_tsv"


def test_convert_criteo_skip_bad_rows_flag(tmp_path, capsys):
    lines = criteo_lines(40)
    lines[5] = "garbage"
    day = criteo_file(tmp_path / "train.txt", lines)
    code = run(
        "data",
        "convert",
        "criteo",
        str(day),
        "--out",
        str(tmp_path / "o"),
        "--skip-bad-rows",
        "--no-progress",
        "--set",
        "data.convert.valid_fraction=0",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_rows"] == 1 and result["rows"]["train"] == 39


def _head(source, path, rows):
    """The header and the first ``rows`` rows of a real CSV (read from ../shared/data, never kept here)."""
    with source.open() as f:
        path.write_text("".join(next(f) for _ in range(rows + 1)))
    return path


def test_convert_csv_with_the_frappe_preset(tmp_path, capsys):
    train = _head(shared_data("frappe_x1", "train.csv"), tmp_path / "train.csv", 200)
    valid = _head(shared_data("frappe_x1", "valid.csv"), tmp_path / "valid.csv", 30)
    out = tmp_path / "frappe"
    code = run(
        "data",
        "convert",
        "csv",
        str(train),
        "--valid",
        str(valid),
        "--config",
        "frappe",
        "--set",
        f"data.train_path={out}/train",
        "--set",
        f"data.valid_path={out}/valid",
        "--no-progress",
    )
    assert code == 0  # --out defaults to the parent of data.train_path
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 200, "valid": 30}
    users = pq.read_table(out / "train", columns=["user"]).column("user").to_numpy()
    distinct = len({line.split(",")[1] for line in train.read_text().splitlines()[1:]})
    assert set(np.unique(users)) == set(range(2, 2 + distinct))  # vocab rows: 2.. (0 missing, 1 unseen)


def test_cli_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="--config"):
        run("data", "convert", "csv", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"))
    with pytest.raises(DataError, match="no such input file"):
        run("data", "convert", "criteo", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o"), "--no-progress")
    with pytest.raises(DataError, match="no such Parquet file or directory"):
        run("data", "inspect", str(tmp_path / "nothing"))


def test_zipper_builds_at_now_and_says_how_to_train_on_it(tmp_path, capsys):
    sets = [
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.synthetic.num_train=6000",
        "data.synthetic.num_valid=500",
        "data.synthetic.seconds_per_row=144",  # 600 impressions a day, 10 days
        "data.zipper.order=arrival",
    ]
    argv = ["data", "zipper", "zipper_synthetic", "--synthetic", *[x for s in sets for x in ("--set", s)]]
    assert run(*argv, "--out", str(tmp_path / "z")) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["order"] == "arrival" and record["windows_s"] == [86400.0, 259200.0, 604800.0]
    assert json.loads((tmp_path / "z" / "zipper.json").read_text()) == record
    days = sorted(p.name for p in (tmp_path / "z" / "train").iterdir())
    rows = sum(pq.read_metadata(f).num_rows for d in days for f in (tmp_path / "z" / "train" / d).glob("*.parquet"))
    assert rows == sum(v["rows"] for v in record["train"].values()) and len(days) == 9
    assert "data.features.window=zipper_window" in out.err
    assert "9 days in arrival order; train in that order with trainer.streaming.enabled=true" in out.err
    shares = ",".join(f"{x:.4f}" for x in record["seen_share"][:-1])
    assert f"model.tasks.N.window_shares=[{shares}]" in out.err
    with pytest.raises(ValueError, match=r"--out: .* already exists"):
        run(*argv, "--out", str(tmp_path / "z"))
