"""``recscale data inspect``: what a Parquet file or directory holds, from its footers (no data read)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from recscale.data.partition import open_catalog
from recscale.data.prepare import CONVERT_STATS
from recscale.data.synthetic import CLAIMS


def _stats_file(path: Path) -> Path | None:
    """``claims.json`` / ``schema.json`` in ``path`` or its parents (up to two levels)."""
    start = path if path.is_dir() else path.parent
    for folder in (start, start.parent, start.parent.parent):
        for name in (CLAIMS, CONVERT_STATS):
            if (folder / name).is_file():
                return folder / name
    return None


def inspect_path(path: str | Path) -> dict[str, object]:
    """Files, rows, row groups, the schema and column statistics summary; plus the stats JSON nearby.

    For a converter or generator output directory (holding ``train/`` and ``valid/``) each split is inspected.
    """
    root = Path(path).expanduser()
    if root.is_dir() and not any(root.glob("*.parquet")) and any((root / s).is_dir() for s in ("train", "valid")):
        out: dict[str, object] = {"path": str(root)}
        for split in ("train", "valid"):
            if (root / split).is_dir():
                out[split] = _inspect_parquet(root / split)
    else:
        out = _inspect_parquet(root)
    stats = _stats_file(root)
    if stats is not None:
        out["stats_file"] = str(stats)
        out["stats"] = json.loads(stats.read_text())
    return out


def _inspect_parquet(path: Path) -> dict[str, object]:
    catalog = open_catalog(path)
    schema = catalog.schemas[0]
    meta = pq.read_metadata(catalog.files[0])
    compression = meta.row_group(0).column(0).compression if meta.num_row_groups and meta.num_columns else None
    rows = catalog.group_rows
    return {
        "path": str(path),
        "files": len(catalog.files),
        "bytes": sum(os.path.getsize(f) for f in catalog.files),
        "rows": catalog.num_rows,
        "row_groups": catalog.num_groups,
        "rows_per_row_group": {
            "min": int(rows.min()) if len(rows) else 0,
            "max": int(rows.max()) if len(rows) else 0,
        },
        "compression": compression,
        "columns": {field.name: str(field.type) for field in schema},
    }


def format_inspection(info: dict[str, object]) -> str:
    """A human-readable summary of ``inspect_path``'s result."""
    lines = []
    parts = [(k, info[k]) for k in ("train", "valid") if k in info] or [("", info)]
    for name, part in parts:
        assert isinstance(part, dict)
        title = f"{name}: " if name else ""
        lines.append(
            f"{title}{part['path']}: {part['rows']:,} rows in {part['row_groups']} row groups, {part['files']} files, "
            f"{part['bytes'] / 1e6:.1f} MB ({part['compression']})"
        )
        columns = part["columns"]
        assert isinstance(columns, dict)
        row = "   "
        for column, tp in columns.items():
            item = f" {column}: {tp},"
            if len(row) + len(item) > 110:
                lines.append(row)
                row = "   "
            row += item
        lines.append(row.rstrip(","))
    if "stats" in info:
        lines.append(f"stats ({info['stats_file']}):")
        lines.append(json.dumps(info["stats"], indent=2))
    return "\n".join(lines)
