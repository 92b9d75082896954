"""``prepare_data``: make sure the data a job reads exists and matches its feature schema.

``source: synthetic`` generates the planted-truth data once into ``cache_dir/<key>``, where the key
hashes everything that changes the data (generator version, feature schema, generator settings,
table sizes). Concurrent callers (the launcher, then every rank) are safe: an exclusive file lock
serialises generation, and the data directory appears by an atomic rename, so a reader never sees a
half-written one. ``source: parquet`` checks that the paths exist and that every file has the
declared columns with usable types, and uses Parquet column statistics (no data pages read) to catch
ids that do not fit their table under ``hashing: none`` (except on ``collisions: managed`` tables, whose
features carry raw ids).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from recscale.configs.loader import config_to_dict
from recscale.configs.schema import DataConfig, EmbeddingsConfig, FeatureSchemaConfig
from recscale.data.columns import check_schema, raw_id_tables, table_rows
from recscale.data.errors import DataError
from recscale.data.partition import Catalog, open_catalog
from recscale.data.synthetic import CLAIMS, GENERATOR_VERSION, generate_synthetic

log = logging.getLogger("recscale")

CONVERT_STATS = "schema.json"
"""Name of the stats / schema JSON the converters write beside ``train/`` and ``valid/``."""


@dataclass(frozen=True)
class DataPaths:
    """Where a job's data is."""

    train: Path
    """Parquet file or directory of the training examples."""
    valid: Path
    """Parquet file or directory of the validation examples."""
    test: Path | None = None
    """Parquet file or directory of the held-out test examples (``data.test_path``), if any."""
    stats: Path | None = None
    """``claims.json`` (synthetic) or ``schema.json`` (converted data) when there is one."""

    def claims(self) -> dict[str, object]:
        """The stats JSON as a dict (empty when there is none)."""
        if self.stats is None or not self.stats.is_file():
            return {}
        data: dict[str, object] = json.loads(self.stats.read_text())
        return data


def synthetic_key(data: DataConfig, embeddings: EmbeddingsConfig) -> str:
    """Cache key of the generated data: a hash of everything that changes it."""
    rows = table_rows(embeddings)
    used = {s.table for s in data.features.sparse} | {q.table for q in data.features.sequences}
    blob = {
        "version": GENERATOR_VERSION,
        "features": config_to_dict(data.features),
        "synthetic": config_to_dict(data.synthetic),
        "tables": {name: rows[name] for name in sorted(used) if name in rows},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(data: DataConfig, embeddings: EmbeddingsConfig) -> DataPaths:
    """Generate (once) or check the job's data; returns where it is (see the module docstring)."""
    if data.source == "synthetic":
        return _prepare_synthetic(data, embeddings)
    train, valid = Path(data.train_path).expanduser(), Path(data.valid_path).expanduser()
    test = Path(data.test_path).expanduser() if data.test_path else None
    rows = table_rows(embeddings)
    checked = [(train, False), (valid, bool(data.features.oracle))]
    for path, with_oracle in checked + ([(test, bool(data.features.oracle))] if test is not None else []):
        catalog = open_catalog(path)
        for file, schema in zip(catalog.files, catalog.schemas):
            check_schema(schema, data.features, file, with_oracle)
        problem = check_id_ranges(catalog, data.features, rows, raw_id_tables(embeddings))
        if problem and data.reader.on_bad_row == "error":
            raise DataError(problem)
        if problem:
            log.warning("%s; such rows will be skipped (on_bad_row: skip)", problem)
    stats = _common_parent(train, valid) / CONVERT_STATS
    return DataPaths(train=train, valid=valid, test=test, stats=stats if stats.is_file() else None)


def _prepare_synthetic(data: DataConfig, embeddings: EmbeddingsConfig) -> DataPaths:
    cache = Path(data.cache_dir).expanduser()
    target = cache / synthetic_key(data, embeddings)
    paths = DataPaths(train=target / "train", valid=target / "valid", stats=target / CLAIMS)
    if paths.stats is not None and paths.stats.is_file():
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (target / CLAIMS).is_file():
            log.info("generating synthetic data into %s", target)
            try:
                generate_synthetic(data, embeddings, target)
            except FileExistsError:
                pass  # another process (without the lock, e.g. on NFS) finished first
    if not (target / CLAIMS).is_file():
        raise DataError(f"{target}: synthetic data generation did not complete (no {CLAIMS})")
    return paths


def _common_parent(a: Path, b: Path) -> Path:
    parent_a = a.parent if a.suffix == ".parquet" else a
    parent_b = b.parent if b.suffix == ".parquet" else b
    return parent_a.parent if parent_a.parent == parent_b.parent else parent_a


def check_id_ranges(
    catalog: Catalog, features: FeatureSchemaConfig, rows: dict[str, int], raw_tables: frozenset[str] = frozenset()
) -> str:
    """The first id outside its table for a ``hashing: none`` feature, by Parquet statistics ('' if none).

    Only the footers are read. Row groups without statistics are not checked here (the reader still
    checks every id it decodes). Features of ``raw_tables`` (managed tables: raw ids) are not checked.
    """
    columns = [(s.name, s.table) for s in features.sparse if s.hashing == "none" and s.table not in raw_tables]
    columns += [(q.ids, q.table) for q in features.sequences if q.hashing == "none" and q.table not in raw_tables]
    if not columns:
        return ""
    for file in catalog.files:
        meta = pq.read_metadata(file)
        paths = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
        for name, table in columns:
            leaf = next((j for p, j in paths.items() if p == name or p.startswith(f"{name}.")), None)
            if leaf is None:
                continue
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(leaf).statistics
                if stats is None or not stats.has_min_max:
                    continue
                if stats.min < 0 or stats.max >= rows[table]:
                    bad = stats.max if stats.max >= rows[table] else stats.min
                    return (
                        f"{file}: row group {g}: column {name!r}: id {bad} is outside table {table!r} "
                        f"(rows 0..{rows[table] - 1}) and hashing is 'none' (use hashing: modulo or hash, or a "
                        "bigger table)"
                    )
    return ""
