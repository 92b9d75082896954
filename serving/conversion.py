"""What ``recscale data convert`` did to a run's data, written into the artifact for raw-text input.

A run trained on converted data (``data.source: parquet``, ``train_path`` / ``valid_path`` =
``OUT/train`` / ``OUT/valid``) has the converter's record beside them, ``OUT/schema.json``: the input
format, the dense transform and fill, the categorical encoding and the rows each table was encoded
into; ``vocab`` mode also left ``OUT/vocab/<column>.npz``. ``raw_spec`` turns that into the ``raw``
section of ``features.json``; ``serve.py`` then reads CSV / Criteo TSV rows exactly as the converter
did. A run on synthetic or hand-made Parquet has no such record, and its artifact scores Parquet only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig

CONVERT_STATS = "schema.json"
REMAP_DIR = "graphhash"
"""The conversion's GraphHash community maps (``recscale.data.remap.REMAP_DIR``), copied into the artifact."""
"""The converter's record (``recscale.data.prepare.CONVERT_STATS``; the serving side does not import data/)."""
FORMATS = ("criteo_tsv", "csv")


def conversion_dir(cfg: JobConfig) -> Path | None:
    """``OUT`` of the conversion that wrote the run's training data, when there was one."""
    if cfg.data.source != "parquet" or not cfg.data.train_path:
        return None
    train = Path(cfg.data.train_path).expanduser()
    folder = train.parent if train.suffix == ".parquet" else train
    out = folder.parent
    return out if (out / CONVERT_STATS).is_file() else None


def raw_spec(cfg: JobConfig) -> tuple[dict[str, Any] | None, Path | None]:
    """``(the raw section of features.json, the vocab folder to copy)``; ``(None, None)`` without a record."""
    out = conversion_dir(cfg)
    if out is None:
        return None, None
    stats = json.loads((out / CONVERT_STATS).read_text())
    if stats.get("format") not in FORMATS:
        return None, None
    convert = stats["convert"]
    names = [s.name for s in cfg.data.features.sparse]
    table_rows = {name: int(stats["features"][name]["table_rows"]) for name in names if name in stats["features"]}
    if len(table_rows) != len(names):
        return None, None  # the run uses a column the conversion did not write
    spec = {
        "format": stats["format"],
        "layout": stats.get("layout"),
        "delimiter": stats.get("delimiter", ","),
        "categorical": convert["categorical"],
        "dense_transform": convert["dense_transform"],
        "dense_missing": float(convert["dense_missing"]),
        "table_rows": table_rows,
        "remap": {name: rule for name, rule in stats.get("remap_spec", {}).items() if name in table_rows},
        "converted": str(out),
    }
    vocab = out / "vocab" if convert["categorical"] == "vocab" else None
    return spec, vocab


def graphhash_dir(cfg: JobConfig) -> Path | None:
    """The conversion's ``graphhash/`` folder (``data.convert.fields`` with GraphHash), when there is one."""
    out = conversion_dir(cfg)
    return out / REMAP_DIR if out is not None and (out / REMAP_DIR).is_dir() else None


__all__ = ["conversion_dir", "graphhash_dir", "raw_spec"]
