"""A held-out test split: converted with ``--test``, named by ``data.test_path``, read only by
``recscale eval --split test`` (never by training)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from recscale.launch import cli
from tests.data.test_bad_input import criteo_file, criteo_lines
from tests.launch.helpers import in_process
from tests.launch.test_one_line_errors import assert_one_error_line
from tests.trainer.runs import SMALL

pytestmark = pytest.mark.integration


def test_convert_routes_test_inputs_to_test_only(tmp_path):
    from recscale.configs import load_config
    from recscale.data.converters import convert_criteo

    train = criteo_file(tmp_path / "day_0.tsv", criteo_lines(60))
    valid = criteo_file(tmp_path / "day_1.tsv", criteo_lines(60, sample=1)[:25])
    test = criteo_file(tmp_path / "day_2.tsv", criteo_lines(60, sample=1)[25:45])
    cfg = load_config("criteo_kaggle", ["data.convert.valid_fraction=0"])
    stats = convert_criteo(
        [train], tmp_path / "out", cfg.data, cfg.embeddings, valid_inputs=[valid], test_inputs=[test], progress=False
    )
    assert stats["rows"] == {"train": 60, "valid": 25, "test": 20}
    assert stats["inputs"]["test"] == [str(test)]
    assert pq.read_table(tmp_path / "out" / "test").num_rows == 20


def test_eval_split_test_reads_data_test_path_and_nothing_else(tmp_path, capfd):
    sets = [x for s in SMALL if s.startswith("data.") for x in ("--set", s)]
    assert cli.main(["data", "synth", "quickstart", *sets, "--out", str(tmp_path / "d")]) == 0
    table = pq.read_table(tmp_path / "d" / "valid")
    kept = table.num_rows // 3  # valid keeps a third, test gets the rest: the row counts tell the splits apart
    (tmp_path / "d" / "test").mkdir()
    pq.write_table(table.slice(kept), tmp_path / "d" / "test" / "part-00000.parquet")
    pq.write_table(table.slice(0, kept), tmp_path / "d" / "valid" / "part-00000.parquet")
    data = [
        "data.source=parquet",
        f"data.train_path={tmp_path / 'd' / 'train'}",
        f"data.valid_path={tmp_path / 'd' / 'valid'}",
        f"data.test_path={tmp_path / 'd' / 'test'}",
    ]
    args = [x for s in [*SMALL, *data] for x in ("--set", s)]
    run_dir = tmp_path / "run"
    trained = in_process(capfd, "train", "quickstart", "--nproc", "1", *args, "--run-dir", str(run_dir))
    assert trained.returncode == 0, trained.stderr[-3000:]
    final = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    assert final["num_examples"] == kept  # training evaluated on valid, not on test

    on_test = in_process(capfd, "eval", str(run_dir), "--split", "test")
    assert on_test.returncode == 0, on_test.stderr[-3000:]
    result = json.loads(on_test.stdout)
    assert result["split"] == "test" and result["num_examples"] == table.num_rows - kept != kept
    assert result["auc"] != final["auc"]  # another set of rows than the run's validation

    both = in_process(capfd, "eval", str(run_dir), "--split", "test", "--data", str(tmp_path / "d" / "test"))
    assert_one_error_line(both, "eval", "--data and --split test: give one")


def test_split_test_without_a_test_path_is_one_line(tmp_path, capfd):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000001" / "manifest.json").write_text("{}")
    from recscale.configs import dump_config, load_config

    dump_config(load_config("quickstart", []), run_dir / "config.yaml")
    proc = in_process(capfd, "eval", str(run_dir), "--split", "test")
    assert_one_error_line(proc, "eval", "has no data.test_path", "--data PATH")
