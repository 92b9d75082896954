"""``recscale data attach-teacher``: join a teacher's stored predictions to a dataset as a teacher column.

A teacher that trains in streaming mode (``trainer.streaming.predictions``) scores each period before it
trains on it, so its scores of period p come from a model that has seen only earlier periods: a stale
teacher, as a production foundation model is. Those scores sit in ``<run_dir>/predictions/<period>/``, one
file per rank whose concatenation in rank order follows the period's rows in file order. This module adds
them to the same rows as a column (``data.features.teacher`` of the student): a float for one task, a list
of floats for several, null where the teacher scored nothing (the first period, or a period it never saw),
which the student treats as a cache miss. The scores belong to the split the teacher streamed over,
``train/``; the rows of ``valid/`` and ``test/`` get an all-null column (so the student's validation reads the
same schema).

The teacher scores the traffic of every domain once; ``domain`` keeps one domain's rows after the join, so
each domain's model reads its own rows with the teacher's scores attached.

The join also scores the teacher on the rows it wrote: per period of ``train/`` and per task whose label
column the data holds, its normalized entropy and calibration on the scored rows with a 0/1 label (after the
domain filter, so on the student's own rows). Beside a plain student's progressive NE it says how the
student should use the teacher (docs/distillation.md).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recscale.data.errors import DataError
from recscale.data.files import atomic_dir
from recscale.data.partition import parquet_files, period_subdirs

SPLITS = ("train", "valid", "test")
SIDECARS = ("claims.json", "schema.json")


@dataclass(frozen=True)
class JoinResult:
    """What a join wrote: rows per split, how many carry a teacher score, and the teacher's quality.

    ``teacher`` is measured on the written rows of ``train/``: ``{task: {"mean_ne", "by_period": {period:
    {"rows", "ne", "calibration"}}}}``; ``mean_ne`` is the mean over periods, as ``trainer.streaming``
    averages its progressive NE.
    """

    rows: dict[str, int]
    scored: dict[str, int]
    teacher: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Quality:
    """Running sums of the teacher's scores against one task's 0/1 labels: rows, positives, Σp, Σ logloss."""

    def __init__(self) -> None:
        self.rows, self.positives, self.predicted, self.loss = 0, 0.0, 0.0, 0.0

    def add(self, labels: np.ndarray, logits: np.ndarray) -> None:
        keep = np.isfinite(labels) & np.isfinite(logits)
        y, z = labels[keep], logits[keep].astype(np.float64)
        p = np.clip(1 / (1 + np.exp(-z)), 1e-7, 1 - 1e-7)
        self.rows += len(y)
        self.positives += float(y.sum())
        self.predicted += float(p.sum())
        self.loss -= float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def summary(self) -> dict[str, float] | None:
        """NE (logloss over the entropy of the rows' base rate) and calibration (Σp / Σy).

        None when the rows hold only one of the two labels.
        """
        if not 0 < self.positives < self.rows:
            return None
        rate = self.positives / self.rows
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        return {
            "rows": self.rows,
            "ne": self.loss / self.rows / entropy,
            "calibration": self.predicted / self.positives,
        }


def read_scored_file(path: Path) -> tuple[np.ndarray, list[str]]:
    """``[n, T]`` logits from a ``recscale predict`` output: its ``p_<task>`` probabilities, as logits."""
    table = pq.read_table(path)
    columns = [c for c in table.column_names if c.startswith("p_")]
    if not columns:
        raise DataError(f"{path}: no p_<task> probability column (expected the output of recscale predict)")
    p = np.stack([table[c].to_numpy() for c in columns], axis=1).astype(np.float64)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32), [c.removeprefix("p_") for c in columns]


def read_predictions(predictions: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """``{period: [n, T] float32 logits}`` and the column names from a run's ``predictions/`` folder."""
    index = predictions / "index.json"
    if not index.is_file():
        raise DataError(
            f"{predictions}: no index.json: neither the predictions of a streaming run nor a recscale predict file"
        )
    meta = json.loads(index.read_text())
    out = {}
    for period in meta["periods"]:
        files = sorted((predictions / period).glob("rank*.parquet"))
        if len(files) != meta["ranks"]:
            raise DataError(f"{predictions / period}: {len(files)} rank files, expected {meta['ranks']}")
        table = pa.concat_tables([pq.read_table(f) for f in files])
        out[period] = np.stack([table[c].to_numpy() for c in meta["columns"]], axis=1).astype(np.float32)
    return out, list(meta["columns"])


def attach_teacher(
    data: Path,
    predictions: Path,
    out: Path,
    column: str = "teacher",
    domain_column: str = "",
    domain: int | None = None,
) -> JoinResult:
    """Write ``data`` to ``out`` with the teacher column added (and only ``domain``'s rows when given).

    Args:
        data: a dataset root with ``train/`` (``valid/``, ``test/``) or one split, each holding one
            subdirectory per period (the layout ``trainer.streaming`` reads).
        predictions: ``<teacher run_dir>/predictions``, or one ``recscale predict`` output file that scored
            the rows of ``train/`` in file order (its ``p_<task>`` probabilities become logits).
        out: the new dataset root (must not exist; appears whole or not at all).
        column: name of the teacher column.
        domain_column: the domain column (with ``domain``).
        domain: keep only rows whose ``domain_column`` equals it.

    Raises:
        DataError: a scored period whose row count differs from the teacher's, a column that exists already,
            a missing domain column, or ``out`` that exists.
    """
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new output directory")
    if predictions.is_file():  # one file scoring the rows of train/ in file order (recscale predict)
        flat, names = read_scored_file(predictions)
        scores = _split_by_period(flat, data / "train" if (data / "train").is_dir() else data)
    else:
        scores, names = read_predictions(predictions)
    splits = [s for s in SPLITS if (data / s).is_dir()] or [""]
    rows: dict[str, int] = {}
    scored: dict[str, int] = {}
    quality: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    with atomic_dir(out) as tmp:
        for split in splits:
            source = data / split if split else data
            periods = period_subdirs(source)
            rows[split or "."], scored[split or "."] = 0, 0
            for period in periods or [source]:
                target = tmp / split / period.name if periods else tmp / split
                logits = scores.get(period.name) if split in ("train", "") else None  # the teacher streamed train/
                sums = {name: _Quality() for name in names}
                n, hit = _join_period(period, logits, names, target, column, domain_column, domain, sums)
                rows[split or "."] += n
                scored[split or "."] += hit
                for name, q in sums.items():
                    if (summary := q.summary()) is not None:
                        quality[name][period.name] = summary
        for name in SIDECARS:
            if (data / name).is_file():
                shutil.copy2(data / name, tmp / name)
    teacher = {
        name: {"mean_ne": sum(q["ne"] for q in by.values()) / len(by), "by_period": by}
        for name, by in quality.items()
        if by
    }
    return JoinResult(rows, scored, teacher)


def _split_by_period(flat: np.ndarray, split: Path) -> dict[str, np.ndarray]:
    """A whole split's scores ``[N, T]`` (rows in file order) cut into its periods' (or the split's own)."""
    periods = period_subdirs(split)
    out, first = {}, 0
    for period in periods or [split]:
        n = sum(pq.read_metadata(f).num_rows for f in parquet_files(period))
        out[period.name] = flat[first : first + n]
        first += n
    if first != len(flat):
        raise DataError(f"{split}: {first} rows, but the predictions file holds {len(flat)} rows")
    return out


def _join_period(
    period: Path,
    logits: np.ndarray | None,
    names: list[str],
    target: Path,
    column: str,
    domain_column: str,
    domain: int | None,
    sums: dict[str, _Quality],
) -> tuple[int, int]:
    """One period's files with the column added; returns (rows written, rows with a score).

    The written scored rows of each task with a label column of that name are added to ``sums``.
    """
    files = parquet_files(period)
    total = sum(pq.read_metadata(f).num_rows for f in files)
    if logits is not None and len(logits) != total:
        raise DataError(
            f"{period}: {total} rows, but the teacher scored {len(logits)} rows of period {period.name}: "
            "the predictions must come from a streaming run over these very files"
        )
    target.mkdir(parents=True, exist_ok=True)
    first, written, hits = 0, 0, 0
    for i, file in enumerate(files):
        table = pq.read_table(file)
        if column in table.column_names:
            raise DataError(f"{file}: already has a column {column!r}; choose another --column")
        part = None if logits is None else logits[first : first + table.num_rows]
        first += table.num_rows
        table = table.append_column(column, _teacher_array(part, table.num_rows, len(names)))
        if domain is not None:
            if domain_column not in table.column_names:
                raise DataError(f"{file}: no domain column {domain_column!r} to keep domain {domain} by")
            table = table.filter(pc.equal(table[domain_column], domain))
        pq.write_table(table, target / f"part-{i:05d}.parquet")
        if part is not None:
            _add_quality(table, column, names, sums)
        written += table.num_rows
        hits += table.num_rows - table[column].null_count
    return written, hits


def _add_quality(table: pa.Table, column: str, names: list[str], sums: dict[str, _Quality]) -> None:
    """Add the written rows' teacher logits against each task's label column.

    Only 0/1 labels count: a task whose labels are not 0/1 (a regression) is dropped from ``sums``.
    """
    scores = table[column]  # every row of a scored file has its score
    if len(names) > 1:
        scores = pc.list_flatten(scores)
    logits = scores.to_numpy().astype(np.float64).reshape(table.num_rows, len(names))
    for t, name in enumerate(names):
        if name not in table.column_names or name not in sums:
            continue
        labels = table[name].to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isin(labels[np.isfinite(labels)], (0.0, 1.0)).all():
            del sums[name]
            continue
        sums[name].add(labels, logits[:, t])


def _teacher_array(logits: np.ndarray | None, n: int, num_tasks: int) -> pa.Array:
    """A float column (one task) or a list-of-floats column (several); all null without scores."""
    if num_tasks == 1:
        return pa.array(logits[:, 0], type=pa.float32()) if logits is not None else pa.nulls(n, pa.float32())
    kind = pa.list_(pa.float32())
    if logits is None:
        return pa.nulls(n, kind)
    flat = pa.array(logits.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, num_tasks).cast(kind)
