"""Arrow rows -> checked, table-mapped numpy columns (``Columns``), whole-array operations only.

``decode`` applies the feature schema to one row-group slice: labels must be 0/1 (finite for
``value_labels``), dense values finite, ids inside their table (``hashing: none``) or hashed / reduced
into it (ids of a ``collisions: managed`` table are raw ids: any int64, passed through unchanged for the
model to map to slots), bags truncated to ``max_ids``,
sequences to their ``max_length`` newest events. A bad value raises a ``DataError`` naming the file,
row group, row and column, or, under ``on_bad_row: skip``, marks the row invalid (it becomes a
zero-weight row with empty bags) and is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recscale.configs.schema import FeatureSchemaConfig, Hashing
from recscale.data.errors import BadRowCounter, RowLocation, bad_value_error
from recscale.data.hashing import map_ids
from recscale.data.ragged import Ragged

Sparse = np.ndarray | Ragged
"""A sparse feature: int64 ``[n]`` (exactly one id per row) or a Ragged bag per row."""


@dataclass
class Columns:
    """n consecutive rows, decoded. Shapes: T tasks, N dense features, F sparse features."""

    labels: np.ndarray
    """``[n, T]`` float32 in {0, 1}."""
    dense: np.ndarray
    """``[n, N]`` float32, finite."""
    sparse: list[Sparse]
    """F features, rows already in ``[0, table rows)`` (raw int64 ids for a ``collisions: managed`` table)."""
    sequences: list[Ragged]
    """Item ids per event type (oldest first, at most ``max_length`` each), in table rows."""
    timestamps: list[Ragged | None]
    """Timestamps per event type (None where the schema has none)."""
    domain: np.ndarray | None = None
    """``[n]`` int64."""
    oracle: np.ndarray | None = None
    """``[n, T]`` float32."""
    window: np.ndarray | None = None
    """``[n]`` int64 Zipper window."""
    teacher: np.ndarray | None = None
    """``[n, T]`` float32 teacher logits, NaN where the teacher had no prediction."""
    valid: np.ndarray | None = None
    """``[n]`` bool; None = every row valid. Invalid rows (skipped bad rows) carry no ids."""
    sparse_matrix: np.ndarray | None = field(default=None, repr=False)
    """``[n, F]`` int64 when every feature is single-hot (the fast path; ``sparse`` then holds its column
    views), else None. Row-major, so a batch's rows are gathered as contiguous runs of F ids."""

    @property
    def num_rows(self) -> int:
        """Rows n."""
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DecodeSpec:
    """What ``decode`` needs besides the rows: the schema, the table sizes, the bad-row policy."""

    features: FeatureSchemaConfig
    rows: dict[str, int]
    """Rows of each table, by name."""
    skip_bad_rows: bool
    with_oracle: bool
    raw_id_tables: frozenset[str] = frozenset()
    """Tables whose features carry raw ids (``collisions: managed``): not range-checked, not hashed."""


@dataclass
class _Problems:
    """Bad values found in a slice: ``(column, mask [n], describe(row) -> str)``."""

    found: list[tuple[str, str, np.ndarray, Callable[[int], str]]] = field(default_factory=list)

    def add(self, column: str, reason: str, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        if mask.any():
            self.found.append((column, reason, mask, describe))


def _numpy(array: pa.ChunkedArray | pa.Array, dtype: type, writable: bool = True) -> np.ndarray:
    """A column as numpy ``dtype`` (nulls become NaN for floats; callers check nulls first for ints).

    Arrow memory is read-only; ``writable=False`` skips the copy when the caller copies anyway.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if array.null_count and np.issubdtype(dtype, np.floating):
        array = array.cast(pa.float64())
    out = np.asarray(array.to_numpy(zero_copy_only=False), dtype=dtype)
    return out if out.flags.writeable or not writable else out.copy()


def _ragged(array: pa.ChunkedArray, column: str, problems: _Problems, n: int) -> Ragged:
    """A list<int> column -> Ragged; a null list is empty, a null inside a list is a bad value."""
    array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if array.null_count:
        array = pc.if_else(pc.is_null(array), pa.scalar([], type=array.type), array)
    if isinstance(array.type, pa.FixedSizeListType):
        array = array.cast(pa.list_(array.type.value_type))
    ragged = Ragged.from_arrow(array)
    flat = array.flatten()
    if flat.null_count:
        bad = np.zeros(n, dtype=bool)
        bad[ragged.row_of_value()[np.asarray(flat.is_null().to_numpy(zero_copy_only=False))]] = True
        problems.add(column, "null id in list", bad, lambda i: "a null id inside the list")
        ragged.values = np.nan_to_num(ragged.values.astype(np.float64)).astype(np.int64)
    ragged.values = ragged.values.astype(np.int64, copy=False)
    return ragged


def _check_ids(
    values: np.ndarray,
    row_of: np.ndarray | None,
    hashing: Hashing,
    num_rows: int,
    column: str,
    table: str,
    n: int,
    problems: _Problems,
) -> np.ndarray:
    """Map ids into the table; with ``hashing: none`` mark rows with an id outside ``[0, rows)``."""
    if hashing != "none":
        return map_ids(values, hashing, num_rows)
    out_of_range = (values < 0) | (values >= num_rows)
    if out_of_range.any():
        bad = np.zeros(n, dtype=bool)
        bad_rows = np.nonzero(out_of_range)[0] if row_of is None else row_of[out_of_range]
        bad[bad_rows] = True
        first_value = {int(r): int(v) for r, v in zip(bad_rows[::-1], values[out_of_range][::-1])}
        problems.add(
            column,
            "id out of range",
            bad,
            lambda i: (
                f"id {first_value[i]} is outside table {table!r} (rows 0..{num_rows - 1}) and hashing is "
                "'none' (use hashing: modulo or hash, or a bigger table)"
            ),
        )
        return np.where(out_of_range, 0, values)
    return values


def _table_ids(
    values: np.ndarray,
    row_of: np.ndarray | None,
    hashing: Hashing,
    spec: DecodeSpec,
    column: str,
    table: str,
    n: int,
    problems: _Problems,
) -> np.ndarray:
    """``values`` unchanged for a raw-id (managed) table, else mapped into / checked against the table."""
    if table in spec.raw_id_tables:
        return values
    return _check_ids(values, row_of, hashing, spec.rows[table], column, table, n, problems)


def decode(table: pa.Table, spec: DecodeSpec, location: RowLocation, counter: BadRowCounter) -> Columns:
    """Decode one row-group slice (``location`` names its file and row group; rows count from ``location.row``)."""
    f = spec.features
    n = table.num_rows
    problems = _Problems()

    labels = np.empty((n, len(f.labels)), dtype=np.float32)
    for t, name in enumerate(f.labels):
        col = _numpy(table.column(name), np.float32, writable=False)
        labels[:, t] = col
        if name in f.value_labels:  # a regression target: any finite value
            bad = ~np.isfinite(col)
            problems.add(name, "label not finite", bad, lambda i, col=col: f"label {col[i]} is not finite")
            continue
        bad = ~((col == 0) | (col == 1))
        problems.add(name, "label not 0/1", bad, lambda i, col=col: f"label {col[i]} is not 0 or 1")

    dense = np.empty((n, len(f.dense)), dtype=np.float32)
    for j, name in enumerate(f.dense):
        col = _numpy(table.column(name), np.float32, writable=False)
        dense[:, j] = col
        problems.add(
            name, "non-finite dense", ~np.isfinite(col), lambda i, col=col: f"dense value {col[i]} is not finite"
        )

    sparse: list[Sparse] = []
    for s in f.sparse:
        array = table.column(s.name)
        if pa.types.is_integer(array.type):
            if array.null_count:  # a missing single-hot value is an empty bag
                valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False))
                ids = _numpy(pc.fill_null(array, 0), np.int64)
                ragged = Ragged.from_lengths(valid.astype(np.int64), ids[valid])
                ragged.values = _table_ids(
                    ragged.values, ragged.row_of_value(), s.hashing, spec, s.name, s.table, n, problems
                )
                sparse.append(ragged)
            else:
                ids = _numpy(array, np.int64, writable=False)  # copied into the id matrix below
                sparse.append(_table_ids(ids, None, s.hashing, spec, s.name, s.table, n, problems))
        else:
            ragged = _ragged(array, s.name, problems, n).keep(s.max_ids, newest=False)
            ragged.values = _table_ids(
                ragged.values, ragged.row_of_value(), s.hashing, spec, s.name, s.table, n, problems
            )
            sparse.append(ragged)

    sequences: list[Ragged] = []
    timestamps: list[Ragged | None] = []
    for q in f.sequences:
        ids = _ragged(table.column(q.ids), q.ids, problems, n)
        times = _ragged(table.column(q.timestamps), q.timestamps, problems, n) if q.timestamps else None
        if times is not None:
            mismatch = ids.lengths != times.lengths
            if mismatch.any():
                problems.add(
                    q.timestamps,
                    "timestamps length mismatch",
                    mismatch,
                    lambda i, a=ids.lengths, b=times.lengths: f"{b[i]} timestamps for {a[i]} events",
                )
                times = Ragged.from_lengths(ids.lengths, np.zeros(len(ids.values), dtype=np.int64))
            times = times.keep(q.max_length, newest=True)
        ids = ids.keep(q.max_length, newest=True)
        ids.values = _table_ids(ids.values, ids.row_of_value(), q.hashing, spec, q.ids, q.table, n, problems)
        sequences.append(ids)
        timestamps.append(times)

    domain = None
    if f.domain:
        array = table.column(f.domain)
        col = _numpy(array, np.float64)
        problems.add(f.domain, "bad domain", ~(col >= 0), lambda i, col=col: f"domain {col[i]} is not an id >= 0")
        domain = np.nan_to_num(col, nan=0.0).astype(np.int64)

    oracle = None
    if spec.with_oracle and f.oracle:
        oracle = _oracle(table.column(f.oracle), len(f.labels), f.oracle, problems, n)

    window = None
    if f.window:
        col = _numpy(table.column(f.window), np.float64)
        problems.add(
            f.window,
            "bad window",
            ~((col >= 0) & (col < f.num_windows)),
            lambda i, col=col: f"window {col[i]} is not in 0..{f.num_windows - 1}",
        )
        window = np.nan_to_num(col, nan=0.0).astype(np.int64)

    teacher = _teacher(table.column(f.teacher), len(f.labels), f.teacher, problems, n) if f.teacher else None

    columns = Columns(labels, dense, sparse, sequences, timestamps, domain, oracle, window, teacher)
    _settle(columns, problems, spec.skip_bad_rows, location, counter)
    if columns.valid is None and sparse and all(isinstance(x, np.ndarray) for x in sparse):
        columns.sparse_matrix = np.stack(sparse, axis=1)  # type: ignore[arg-type]
        columns.sparse = list(columns.sparse_matrix.T)
    else:
        columns.sparse = [x if isinstance(x, Ragged) or x.flags.writeable else x.copy() for x in columns.sparse]
    return columns


def _teacher(array: pa.ChunkedArray, num_tasks: int, column: str, problems: _Problems, n: int) -> np.ndarray:
    """Teacher logits ``[n, T]`` (NaN for a null row: no prediction) from a float or list<float> column."""
    flat = array.combine_chunks()
    missing = np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(flat.type):
        values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32)[:, None]
        wrong = np.zeros(n, dtype=bool) if num_tasks == 1 else ~missing
        values = np.repeat(values, num_tasks, axis=1)
    else:
        lengths = np.asarray(pc.list_value_length(flat).fill_null(num_tasks).to_numpy(zero_copy_only=False))
        wrong = lengths != num_tasks
        values = np.full((n, num_tasks), np.nan, dtype=np.float32)
        if not wrong.any():
            dense = np.asarray(flat.fill_null([0.0] * num_tasks).flatten().to_numpy(zero_copy_only=False))
            values = dense.astype(np.float32).reshape(n, num_tasks)
    problems.add(column, "teacher arity", wrong, lambda i: f"teacher logits for {num_tasks} tasks expected")
    bad = ~missing & ~np.isfinite(values).all(axis=1)
    problems.add(column, "teacher not finite", bad, lambda i: f"teacher logits {values[i].tolist()} are not finite")
    values[missing | wrong | bad] = np.nan
    return values


def _oracle(array: pa.ChunkedArray, num_tasks: int, column: str, problems: _Problems, n: int) -> np.ndarray:
    """The true probabilities ``[n, T]``: a float column (T = 1) or a list<float> of T per row."""
    if pa.types.is_floating(array.type):
        values = _numpy(array, np.float32)[:, None]
        if num_tasks != 1:
            problems.add(
                column, "oracle arity", np.ones(n, dtype=bool), lambda i: f"1 probability for {num_tasks} labels"
            )
            values = np.repeat(values, num_tasks, axis=1)
    else:
        flat = array.combine_chunks()
        lengths = np.asarray(pc.list_value_length(flat).fill_null(0).to_numpy(zero_copy_only=False))
        wrong = lengths != num_tasks
        if wrong.any():
            problems.add(column, "oracle arity", wrong, lambda i: f"{lengths[i]} probabilities for {num_tasks} labels")
            values = np.full((n, num_tasks), 0.5, dtype=np.float32)
        else:
            values = _numpy(flat.flatten(), np.float32).reshape(n, num_tasks)
    out_of_range = ~((values >= 0) & (values <= 1)).all(axis=1)
    problems.add(
        column,
        "oracle not a probability",
        out_of_range,
        lambda i: f"true probability {values[i].tolist()} is not in [0, 1]",
    )
    return np.nan_to_num(values, nan=0.5)


def _settle(columns: Columns, problems: _Problems, skip: bool, location: RowLocation, counter: BadRowCounter) -> None:
    """Raise for the first bad row, or mark bad rows invalid (zeroed, empty bags) and count them."""
    if not problems.found:
        return
    if not skip:
        column, _, mask, describe = min(problems.found, key=lambda p: int(np.argmax(p[2])))
        row = int(np.argmax(mask))
        where = RowLocation(location.file, location.row_group, (location.row or 0) + row)
        raise bad_value_error(where, column, describe(row))
    bad = np.zeros(columns.num_rows, dtype=bool)
    for _, _, mask, _ in problems.found:
        bad |= mask
    keep = ~bad
    counter.add(int(bad.sum()), {f"{column}: {reason}": int(mask.sum()) for column, reason, mask, _ in problems.found})
    columns.valid = keep
    columns.labels[bad] = 0
    columns.dense[bad] = 0
    if columns.oracle is not None:
        columns.oracle[bad] = 0
    if columns.domain is not None:
        columns.domain[bad] = 0
    if columns.window is not None:
        columns.window[bad] = 0
    if columns.teacher is not None:
        columns.teacher[bad] = np.nan
    columns.sparse = [
        (x.mask_rows(keep) if isinstance(x, Ragged) else Ragged.from_lengths(keep.astype(np.int64), x[keep]))
        for x in columns.sparse
    ]
    columns.sequences = [x.mask_rows(keep) for x in columns.sequences]
    columns.timestamps = [x.mask_rows(keep) if x is not None else None for x in columns.timestamps]


def empty_columns(features: FeatureSchemaConfig, with_oracle: bool) -> Columns:
    """Zero rows with the schema's shapes: the template of a batch that is padding only."""
    num_tasks = len(features.labels)
    no_ids = Ragged.from_lengths(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    columns = Columns(
        labels=np.zeros((0, num_tasks), dtype=np.float32),
        dense=np.zeros((0, len(features.dense)), dtype=np.float32),
        sparse=[np.zeros(0, dtype=np.int64) for _ in features.sparse],
        sequences=[no_ids for _ in features.sequences],
        timestamps=[no_ids if q.timestamps else None for q in features.sequences],
        domain=np.zeros(0, dtype=np.int64) if features.domain else None,
        window=np.zeros(0, dtype=np.int64) if features.window else None,
        teacher=np.zeros((0, num_tasks), dtype=np.float32) if features.teacher else None,
        oracle=np.zeros((0, num_tasks), dtype=np.float32) if with_oracle and features.oracle else None,
    )
    if features.sparse:
        columns.sparse_matrix = np.zeros((0, len(features.sparse)), dtype=np.int64)
    return columns
