"""Report section about how the run's data was converted: rows of remapped fields (GraphHash, modulo).

Read from the converter's ``schema.json`` beside the run's ``data.train_path``; absent for synthetic or
hand-made data, and for conversions without ``data.convert.fields``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recscale.reports.render import Report, percent
from recscale.reports.rundata import RunData

CONVERT_STATS = "schema.json"


def conversion_stats(run: RunData) -> dict[str, Any]:
    """The converter's record of the run's training data (empty when there is none)."""
    train = (run.config.get("data") or {}).get("train_path") or ""
    if not train:
        return {}
    folder = Path(train).expanduser()
    path = (folder.parent if folder.suffix == ".parquet" else folder).parent / CONVERT_STATS
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def remap_section(report: Report, run: RunData) -> None:
    """Per remapped feature: its rule and rows against a full vocabulary table; the clustering's numbers."""
    stats = conversion_stats(run)
    remap = stats.get("remap") or {}
    if not remap:
        return
    report.heading("Remapped fields (data.convert.fields)")
    rows = [
        [
            name,
            entry.get("remap"),
            entry.get("rows_needed", entry.get("table_rows")),
            entry.get("full_rows"),
            entry.get("rows_saved"),
            None if entry.get("saved_fraction") is None else percent(entry["saved_fraction"], 1),
        ]
        for name, entry in remap.items()
    ]
    report.table(["feature", "rule", "rows", "full vocabulary rows", "rows saved", "saved"], rows)
    graph = stats.get("graphhash") or {}
    if "modularity" in graph:
        report.text(
            f"GraphHash: resolution {graph['resolution']}, seed {graph['seed']}, {graph['edges']} user-item pairs "
            f"from {graph['positive_rows']} positive training rows, {graph['communities']} communities, "
            f"bipartite modularity {graph['modularity']:.4f}.",
            note=True,
        )
