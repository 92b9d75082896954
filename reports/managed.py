"""The report section of a run with managed-collision tables: how many ids own a slot, and how many lookups miss."""

from __future__ import annotations

import math
from typing import Any

from recscale.reports import plots
from recscale.reports.render import Report, percent
from recscale.reports.rundata import RunData

PREFIX = "managed/"


def _tables(records: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in records:
        for key in r:
            if key.startswith(PREFIX) and key.endswith("/miss_rate"):
                name = key[len(PREFIX) : -len("/miss_rate")]
                if name not in names:
                    names.append(name)
    return names


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def managed_section(report: Report, run: RunData) -> None:
    """Per managed table: slots, ids admitted at the end, the share of lookups on the shared slot, reassignments."""
    records = run.kind("train")
    tables = _tables(records)
    if not tables:
        return
    rows_of = {t.get("name"): t.get("num_embeddings") for t in run.config.get("embeddings", {}).get("tables", [])}
    report.heading("Managed-collision tables")
    steps = [r.get("step") for r in records]
    series = [(t, steps, [_finite(r.get(f"{PREFIX}{t}/miss_rate")) for r in records]) for t in tables]
    report.image("managed_miss_rate", plots.line_panels([("lookups on the shared slot", "share", series)]), "miss rate")
    rows = []
    for t in tables:
        misses = [m for r in records if (m := _finite(r.get(f"{PREFIX}{t}/miss_rate"))) is not None]
        admitted = [a for r in records if (a := _finite(r.get(f"{PREFIX}{t}/admitted"))) is not None]
        reassigned = sum(_finite(r.get(f"{PREFIX}{t}/reassigned")) or 0.0 for r in records)
        rows.append(
            [
                t,
                rows_of.get(t),
                admitted[-1] if admitted else None,
                percent(misses[0], 1) if misses else None,
                percent(misses[-1], 1) if misses else None,
                reassigned,
            ]
        )
    report.table(
        ["table", "slots", "ids admitted (end)", "miss rate, first window", "last window", "slots reassigned"], rows
    )
    report.text(
        "A managed table's last slot is shared by every id not admitted; the miss rate is the share of training "
        "lookups that read it. Reassigned slots count every slot handed to a new id, empty slots included.",
        note=True,
    )
