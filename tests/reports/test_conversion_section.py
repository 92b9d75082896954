"""The report's remapped-fields section reads the converter's schema.json beside the run's training data."""

from __future__ import annotations

import json
from pathlib import Path

from recscale.reports.conversion import remap_section
from recscale.reports.render import Report
from recscale.reports.rundata import RunData


def _run(tmp_path: Path, train_path: str) -> RunData:
    return RunData(path=tmp_path / "run", config={"data": {"train_path": train_path}}, summary={}, records=[])


def test_remapped_rows_and_the_clustering_are_shown(tmp_path):
    (tmp_path / "out" / "train").mkdir(parents=True)
    remap = {
        "user": {
            "remap": "graphhash",
            "table_rows": 135,
            "rows_needed": 135,
            "full_rows": 926,
            "rows_saved": 791,
            "saved_fraction": 0.8542,
        },
        "ctx": {"remap": "modulo", "table_rows": 7},
    }
    graph = {
        "resolution": 5.0,
        "seed": 0,
        "edges": 15714,
        "positive_rows": 67604,
        "communities": 127,
        "modularity": 0.3389,
    }
    (tmp_path / "out" / "schema.json").write_text(json.dumps({"remap": remap, "graphhash": graph}))
    report = Report("run")
    remap_section(report, _run(tmp_path, str(tmp_path / "out" / "train")))
    kinds = [kind for kind, _ in report.blocks]
    assert kinds == ["h", "table", "p"]
    table = next(value for kind, value in report.blocks if kind == "table")
    assert table[1] == [
        ["user", "graphhash", "135", "926", "791", "85.4%"],
        ["ctx", "modulo", "7", "–", "–", "–"],
    ]
    assert "127 communities" in str(report.blocks[-1][1]) and "0.3389" in str(report.blocks[-1][1])

    empty = Report("run")  # synthetic data, or a conversion without remapped fields: no section
    remap_section(empty, _run(tmp_path, str(tmp_path / "nowhere" / "train")))
    assert empty.blocks == []
