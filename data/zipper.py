"""Zipper (Lattice): one delayed-label dataset with several attribution windows, built at time NOW.

A short attribution window gives fresh rows whose labels miss late conversions; a long one gives
complete labels on stale rows. Zipper keeps both in one dataset and one model: every impression is
assigned, by a hash of its signature, to one window w of ``W_0 < ... < W_{K-1}`` (``probabilities``,
uniform by default), and is emitted once that window has closed,

    emitted      iff  time + W_w <= NOW
    label_w      =    label == 1  and  delay <= W_w           (the conversion seen within window w)
    window       =    w                                       (the head that trains on the row)

so recent impressions come with short-window labels and older ones with long-window labels. A task with
``windows: K`` trains head w on the rows of window w and serves the last head (the longest window).
The validation split is labelled by ``valid_window_s`` (default the longest window: ``label == 1 and
delay <= W_{K-1}``) and every row is given window K-1: it must hold impressions whose longest window has
closed, or outcomes known otherwise (the synthetic generator knows them).

``train/`` keeps the input's order by default (``data.zipper.order: impression``). ``arrival`` writes it
in the order a production stream delivers it, by the time each label becomes known (time + W_w), as one
``day=YYYY-MM-DD/`` folder per 24 hours counted back from NOW: trained in time order, a day's 1-day labels
come beside the 7-day labels of the week before, not at the very end of the stream.

The assignment is ``u = mix64(key_0, mix64(key_1, ... mix64(salt)))`` mapped to [0, 1) and cut at the
cumulative probabilities: deterministic across reruns and machines. One window of 7 days reproduces the
classic "matured labels only" dataset, one window of 1 day the "fresh but incomplete" one, at the same
NOW: the baselines Zipper is compared with.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recscale.configs.schema import DataConfig, ZipperConfig
from recscale.data.files import atomic_dir, write_json
from recscale.data.hashing import mix64
from recscale.data.partition import parquet_files
from recscale.data.planted_tasks import SECONDS_PER_DAY

ZIPPER_JSON = "zipper.json"


@dataclass(frozen=True)
class ZipperPlan:
    """The resolved settings of one build."""

    label: str
    time_column: str
    delay_column: str
    windows: np.ndarray
    """``[K]`` seconds, ascending."""
    cuts: np.ndarray
    """``[K - 1]`` cumulative probabilities."""
    keys: list[str]
    now: int
    salt: int
    window_column: str
    valid_window: float
    """Seconds of the window that labels the validation rows."""
    order: str
    """``impression`` or ``arrival``: the row order of ``train/`` (``data.zipper.order``)."""


def window_of(keys: list[np.ndarray], cuts: np.ndarray, salt: int) -> np.ndarray:
    """Window index ``[n]`` of each impression from its signature columns (integer arrays ``[n]`` each)."""
    n = len(keys[0]) if keys else 0
    h = mix64(np.zeros(n, dtype=np.uint64), salt)
    for column in keys:
        h = mix64(h ^ column.astype(np.int64).astype(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform on [0, 1)
    return np.searchsorted(cuts, u, side="right").astype(np.int64)


def plan_zipper(data: DataConfig, train: Path) -> ZipperPlan:
    """Check ``data.zipper`` against the input and fill in its defaults (NOW, key columns, probabilities)."""
    z: ZipperConfig = data.zipper
    for key in ("label", "time_column", "delay_column"):
        if not getattr(z, key):
            raise ValueError(f"data.zipper.{key}: expected a column name")
    windows = np.asarray(z.windows_s, dtype=np.float64)
    if len(windows) == 0 or np.any(windows <= 0) or np.any(np.diff(windows) <= 0):
        raise ValueError(f"data.zipper.windows_s: expected positive, strictly increasing seconds, got {z.windows_s}")
    probs = np.asarray(z.probabilities or [1.0 / len(windows)] * len(windows), dtype=np.float64)
    if len(probs) != len(windows) or np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-9:
        raise ValueError(
            f"data.zipper.probabilities: expected {len(windows)} non-negative shares summing to 1, "
            f"got {z.probabilities}"
        )
    keys = z.key_columns or [z.time_column, *[s.name for s in data.features.sparse[:2]]]
    files = parquet_files(train)
    schema = pq.read_schema(files[0])
    for name in [z.label, z.time_column, z.delay_column, *keys]:
        if name not in schema.names:
            raise ValueError(f"{files[0]}: column {name!r} (data.zipper) is missing")
    now = z.now_s or 1 + max(int(pc.max(pq.read_table(f, columns=[z.time_column])[0]).as_py()) for f in files)
    cuts = np.cumsum(probs)[:-1]
    if z.valid_window_s < 0:
        raise ValueError(f"data.zipper.valid_window_s: expected >= 0 seconds, got {z.valid_window_s}")
    valid_window = z.valid_window_s or float(windows[-1])
    if z.order not in ("impression", "arrival"):
        raise ValueError(f"data.zipper.order: expected 'impression' or 'arrival', got {z.order!r}")
    return ZipperPlan(
        z.label, z.time_column, z.delay_column, windows, cuts, keys, now, z.salt, z.window_column, valid_window, z.order
    )


def _labels(batch: pa.RecordBatch | pa.Table, plan: ZipperPlan, limit: np.ndarray) -> np.ndarray:
    """``label == 1 and delay <= limit`` per row (a null delay never counts)."""
    label = np.asarray(batch.column(plan.label).to_numpy(zero_copy_only=False), dtype=np.float64)
    delay = batch.column(plan.delay_column).to_numpy(zero_copy_only=False)
    delay = np.asarray(delay, dtype=np.float64)  # nulls -> NaN
    return ((label == 1) & (delay <= limit)).astype(np.int8)


def _with(batch: pa.RecordBatch, plan: ZipperPlan, labels: np.ndarray, window: np.ndarray) -> pa.Table:
    table = pa.Table.from_batches([batch])
    index = table.schema.get_field_index(plan.label)
    table = table.set_column(index, plan.label, pa.array(labels))
    if plan.window_column in table.schema.names:
        table = table.drop_columns([plan.window_column])
    return table.append_column(plan.window_column, pa.array(window))


def _count(counts: dict[str, list[int]], window: np.ndarray, labels: np.ndarray) -> None:
    """Add a batch's rows and positives per window to ``counts`` (window -> [rows, positives])."""
    for w in np.unique(window):
        rows = counts.setdefault(str(int(w)), [0, 0])
        rows[0] += int((window == w).sum())
        rows[1] += int(labels[window == w].sum())


def _write(files: list[str], out: Path, transform) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """Stream ``files`` through ``transform(batch) -> (table, window, labels)`` into ``out/part-*.parquet``."""
    out.mkdir(parents=True)
    counts: dict[str, list[int]] = {}
    for i, file in enumerate(files):
        writer: pq.ParquetWriter | None = None
        reader = pq.ParquetFile(file)
        for batch in reader.iter_batches(batch_size=65_536):
            table, window, labels = transform(batch)
            _count(counts, window, labels)
            if writer is None:
                writer = pq.ParquetWriter(out / f"part-{i:05d}.parquet", table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return counts


def _arrival(table: pa.Table, plan: ZipperPlan) -> np.ndarray:
    """``[n]`` the second each row's label becomes known: impression time + its window."""
    time = np.asarray(table.column(plan.time_column).to_numpy(zero_copy_only=False), dtype=np.int64)
    window = np.asarray(table.column(plan.window_column).to_numpy(zero_copy_only=False), dtype=np.int64)
    return time + plan.windows[window].astype(np.int64)


def _write_by_arrival(  # type: ignore[no-untyped-def]
    files: list[str], out: Path, transform, plan: ZipperPlan
) -> dict[str, list[int]]:
    """Like ``_write``, in arrival order: one ``out/day=YYYY-MM-DD/part-00000.parquet`` per day.

    Day j (0 = the last) holds the rows whose label arrived in ``(NOW - (j+1)·24 h, NOW - j·24 h]``, sorted by
    arrival (ties in input order), and is named by the UTC date it starts on: the calendar day when NOW is
    midnight UTC. So the last day is whole, and a stream that starts a whole number of days before NOW (the
    generator's) has no short first day. Two passes, so memory holds one day and not the dataset: every
    batch's rows are spilled to the folder of their day, then each day is read back, sorted and written once.
    """
    spill = out.parent / f"{out.name}.spill"
    counts: dict[str, list[int]] = {}
    pieces = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536):
            table, window, labels = transform(batch)
            _count(counts, window, labels)
            back = (plan.now - _arrival(table, plan)) // SECONDS_PER_DAY  # days before NOW, >= 0
            for j in np.unique(back):
                (spill / str(j)).mkdir(parents=True, exist_ok=True)
                pq.write_table(table.filter(pa.array(back == j)), spill / str(j) / f"{pieces:08d}.parquet")
                pieces += 1
    out.mkdir(parents=True)
    for folder in sorted(spill.iterdir(), key=lambda p: -int(p.name)) if spill.is_dir() else []:  # oldest first
        table = pq.read_table(sorted(folder.iterdir()))  # pieces in input order
        order = np.argsort(_arrival(table, plan), kind="stable")
        start = plan.now - (int(folder.name) + 1) * SECONDS_PER_DAY + 1
        date = datetime.fromtimestamp(start, tz=timezone.utc).date().isoformat()
        (out / f"day={date}").mkdir()
        pq.write_table(table.take(pa.array(order)), out / f"day={date}" / "part-00000.parquet", row_group_size=65_536)
        shutil.rmtree(folder)
    if spill.is_dir():
        spill.rmdir()
    return counts


def build_zipper(data: DataConfig, train: Path, valid: Path, out: Path) -> dict[str, object]:
    """Write the Zipper dataset of ``train`` / ``valid`` into ``out``; returns what ``zipper.json`` holds.

    ``out/train``: the matured rows with their window and window label; ``out/valid``: every row, window
    K-1, the longest window's label. The directory appears atomically; it must not exist yet.

    ``seen_share``: per window, the share of the longest window's conversions seen within it, counted on the
    impressions whose longest window has closed (whichever window they were given): F_k of ``scaled`` heads
    (``model.tasks[*].window_shares``). None without such a conversion.
    """
    plan = plan_zipper(data, train)
    last = len(plan.windows) - 1
    seen = np.zeros(len(plan.windows), dtype=np.int64)  # conversions of closed impressions within each window

    def train_rows(batch: pa.RecordBatch):  # type: ignore[no-untyped-def]
        keys = [np.asarray(batch.column(k).to_numpy(zero_copy_only=False)) for k in plan.keys]
        window = window_of(keys, plan.cuts, plan.salt)
        limit = plan.windows[window]
        time = np.asarray(batch.column(plan.time_column).to_numpy(zero_copy_only=False), dtype=np.float64)
        matured = time + limit <= plan.now
        labels = _labels(batch, plan, limit)
        closed = time + plan.windows[-1] <= plan.now  # every window of these has closed, whatever their own
        delay = np.asarray(batch.column(plan.delay_column).to_numpy(zero_copy_only=False), dtype=np.float64)
        converted = delay[closed & (_labels(batch, plan, np.full(batch.num_rows, plan.windows[-1])) == 1)]
        seen[:] += (converted[:, None] <= plan.windows[None, :]).sum(axis=0)
        keep = pa.array(matured)
        return _with(batch.filter(keep), plan, labels[matured], window[matured]), window[matured], labels[matured]

    def valid_rows(batch: pa.RecordBatch):  # type: ignore[no-untyped-def]
        window = np.full(batch.num_rows, last, dtype=np.int64)
        labels = _labels(batch, plan, np.full(batch.num_rows, plan.valid_window))
        return _with(batch, plan, labels, window), window, labels

    with atomic_dir(out) as tmp:
        if plan.order == "arrival":
            train_counts = _write_by_arrival(parquet_files(train), tmp / "train", train_rows, plan)
        else:
            train_counts = _write(parquet_files(train), tmp / "train", train_rows)
        valid_counts = _write(parquet_files(valid), tmp / "valid", valid_rows)
        record: dict[str, object] = {
            "now": plan.now,
            "windows_s": plan.windows.tolist(),
            "cuts": plan.cuts.tolist(),
            "key_columns": plan.keys,
            "salt": plan.salt,
            "label": plan.label,
            "valid_window_s": plan.valid_window,
            "window_column": plan.window_column,
            "order": plan.order,
            "train": {w: {"rows": r, "positives": p} for w, (r, p) in sorted(train_counts.items())},
            "valid": {w: {"rows": r, "positives": p} for w, (r, p) in sorted(valid_counts.items())},
            "seen_share": (seen / seen[-1]).tolist() if seen[-1] else None,
            "seen_share_conversions": int(seen[-1]),
        }
        write_json(tmp / ZIPPER_JSON, record)
    return record
