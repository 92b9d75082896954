"""The report's managed-collision section reads the tables' window records from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from recscale.reports.managed import managed_section
from recscale.reports.render import Report
from recscale.reports.rundata import RunData


def test_slots_admitted_ids_and_miss_rates_are_shown(tmp_path: Path):
    records = [
        {"kind": "train", "step": s, "managed/t_user/miss_rate": m, "managed/t_user/admitted": a,
         "managed/t_user/reassigned": r}
        for s, m, a, r in [(10, 0.25, 200.0, 200.0), (20, float("nan"), 255.0, 55.0), (30, 0.125, 255.0, 7.0)]
    ]  # fmt: skip
    config = {"embeddings": {"tables": [{"name": "t_user", "num_embeddings": 256}, {"name": "t_item"}]}}
    run = RunData(path=tmp_path / "run", config=config, summary={}, records=records)
    report = Report("run")
    managed_section(report, run)
    assert [kind for kind, _ in report.blocks] == ["h", "img", "table", "p"]
    table = next(value for kind, value in report.blocks if kind == "table")
    assert table[1] == [["t_user", "256", "255", "25.0%", "12.5%", "262"]]


def test_runs_without_managed_tables_get_no_section(tmp_path: Path):
    report = Report("run")
    managed_section(report, RunData(path=tmp_path, config={}, summary={}, records=[{"kind": "train", "step": 1}]))
    assert report.blocks == []
