"""Which rows each rank and loader worker reads in an epoch: a pure function of Parquet metadata.

The stream of one epoch (all of it computed from row-group row counts, nothing decoded):

1. The global order of row groups: file order, or, when shuffling, a permutation seeded by
   ``(seed, epoch)``. Concatenated, it is a stream of N rows.
2. Rank r takes the contiguous rows ``[r N / W, (r + 1) N / W)`` of that stream, so every row is
   read by exactly one rank and the ranks' row counts differ by at most one. A row group on the
   border is read by both neighbours, each keeping its own part.
3. The rank's rows are cut into *windows*: runs of whole row-group slices of at least
   ``shuffle_buffer_rows`` rows when shuffling (one slice each otherwise). Rows inside a window
   are permuted with a generator seeded by ``(seed, epoch, rank, window)``: the in-buffer shuffle.
4. Batches are consecutive runs of ``batch_size`` rows of that stream. Every rank runs the same
   number of batches: ``floor(floor(N / W) / B)`` when the tail is dropped, ``ceil(ceil(N / W) / B)``
   when it is padded with zero-weight rows (always in eval mode).
5. Loader workers split a rank's batches into contiguous runs; the DataLoader interleaves them
   round-robin, so output batch j comes from worker ``j % num_workers``.

So the position after k batches is just ``(epoch, k)``, and a resumed reader starts decoding at the
window that holds row ``k * B``, skipping earlier row groups without reading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recscale.data.errors import DataError


@dataclass(frozen=True)
class Catalog:
    """The row groups of a Parquet file or directory, in a fixed file order."""

    root: str
    """The path the user gave."""
    files: tuple[str, ...]
    """Parquet files, sorted."""
    schemas: tuple[pa.Schema, ...]
    """Arrow schema of each file."""
    group_file: np.ndarray
    """File index of each row group ``[G]``."""
    group_index: np.ndarray
    """Row-group number inside its file ``[G]``."""
    group_rows: np.ndarray
    """Rows of each row group ``[G]``."""

    @property
    def num_rows(self) -> int:
        """Rows N in all files."""
        return int(self.group_rows.sum())

    @property
    def num_groups(self) -> int:
        """Row groups G in all files."""
        return len(self.group_rows)


def parquet_files(path: str | Path) -> list[str]:
    """The Parquet files of a file or directory (``pyarrow.dataset`` discovery, hidden files skipped)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such Parquet file or directory")
    if root.is_file():
        return [str(root)]
    try:
        dataset = ds.dataset(str(root), format="parquet", exclude_invalid_files=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{root}: cannot list Parquet files: {err}") from None
    files = sorted(dataset.files)
    if not files:
        raise DataError(f"{root}: the directory holds no Parquet files")
    return files


def period_subdirs(path: str | Path) -> list[Path]:
    """The subdirectories of ``path`` in name order: a time-partitioned dataset's periods (``day=.../``).

    Hidden (``.``) and private (``_``) ones are skipped; a file or a missing path has none.
    """
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def open_catalog(path: str | Path) -> Catalog:
    """Read the footers of every file under ``path`` (cheap: no data pages are read)."""
    files = parquet_files(path)
    schemas, group_file, group_index, group_rows = [], [], [], []
    for i, file in enumerate(files):
        try:
            meta = pq.read_metadata(file)
            schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable Parquet file (truncated or corrupt?): {err}") from None
        schemas.append(schema)
        for g in range(meta.num_row_groups):
            group_file.append(i)
            group_index.append(g)
            group_rows.append(meta.row_group(g).num_rows)
    return Catalog(
        root=str(path),
        files=tuple(files),
        schemas=tuple(schemas),
        group_file=np.asarray(group_file, dtype=np.int64),
        group_index=np.asarray(group_index, dtype=np.int64),
        group_rows=np.asarray(group_rows, dtype=np.int64),
    )


@dataclass(frozen=True)
class Slice:
    """Rows ``[start, stop)`` of catalog row group ``group``."""

    group: int
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        """Rows in the slice."""
        return self.stop - self.start


@dataclass(frozen=True)
class Window:
    """Consecutive slices of a rank's stream that are shuffled together."""

    index: int
    """Window number within the rank (seeds its permutation)."""
    first_row: int
    """Position of its first row in the rank's stream."""
    slices: tuple[Slice, ...]

    @cached_property
    def num_rows(self) -> int:
        """Rows in the window."""
        return sum(s.num_rows for s in self.slices)


def seed_words(*values: int) -> list[int]:
    """Non-negative words for ``np.random.SeedSequence`` (negative seeds are folded, not rejected)."""
    return [v % (1 << 63) for v in values]


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch (see the module docstring)."""

    rows: int
    """Real rows of this rank's stream."""
    num_batches: int
    """Batches every rank runs."""
    batch_size: int
    """Rows per batch (padding included)."""
    windows: tuple[Window, ...]
    """The rank's stream, cut into windows."""
    shuffle: bool
    """Rows are permuted inside each window."""

    def window_at(self, row: int) -> int:
        """Index of the window holding stream row ``row`` (``len(windows)`` past the end)."""
        starts = [w.first_row for w in self.windows]
        return int(np.searchsorted(starts, row, side="right")) - 1 if row < self.rows else len(self.windows)


def num_batches(num_rows: int, world_size: int, batch_size: int, pad: bool) -> int:
    """Batches per rank: the same on every rank (see the module docstring)."""
    if pad:
        per_rank = -(-num_rows // world_size)
        return -(-per_rank // batch_size)
    return (num_rows // world_size) // batch_size


def group_order(catalog: Catalog, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Global row-group order of an epoch ``[G]``."""
    if not shuffle:
        return np.arange(catalog.num_groups)
    rng = np.random.default_rng(seed_words(seed, epoch, 0x5EED))
    return rng.permutation(catalog.num_groups)


def plan_epoch(
    catalog: Catalog,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
    buffer_rows: int,
    pad: bool,
) -> EpochPlan:
    """Rank ``rank``'s stream for ``epoch`` (see the module docstring)."""
    order = group_order(catalog, seed, epoch, shuffle)
    rows = catalog.group_rows[order]
    ends = np.cumsum(rows)
    total = int(ends[-1]) if len(ends) else 0
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    first = int(np.searchsorted(ends, lo, side="right"))
    slices = []
    position = 0
    for k in range(first, len(order)):
        group_start = int(ends[k] - rows[k])
        if group_start >= hi:
            break
        start, stop = max(lo, group_start) - group_start, min(hi, int(ends[k])) - group_start
        if stop > start:
            slices.append(Slice(int(order[k]), start, stop))
            position += stop - start
    windows: list[Window] = []
    current: list[Slice] = []
    current_rows, first_row = 0, 0
    for s in slices:
        current.append(s)
        current_rows += s.num_rows
        if not shuffle or current_rows >= buffer_rows:
            windows.append(Window(len(windows), first_row, tuple(current)))
            first_row += current_rows
            current, current_rows = [], 0
    if current:
        windows.append(Window(len(windows), first_row, tuple(current)))
    return EpochPlan(
        rows=hi - lo,
        num_batches=num_batches(total, world_size, batch_size, pad),
        batch_size=batch_size,
        windows=tuple(windows),
        shuffle=shuffle,
    )


def window_permutation(window: Window, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """The in-buffer shuffle of one window: a permutation of its rows ``[num_rows]``."""
    rng = np.random.default_rng(seed_words(seed, epoch, rank, world_size, window.index))
    return rng.permutation(window.num_rows)


# --------------------------------------------------------------------------------------------------
# loader workers
# --------------------------------------------------------------------------------------------------


def worker_batches(num_batches: int, num_workers: int, worker: int) -> tuple[int, int]:
    """The contiguous run ``[first, stop)`` of the rank's batches that loader worker ``worker`` makes.

    Workers get ``num_batches // num_workers`` batches each, the first ``num_batches % num_workers``
    one more, so the DataLoader's round-robin puts rank batch ``j`` at output position
    ``(j - first_w) * num_workers + w``.
    """
    base, extra = divmod(num_batches, num_workers)
    first = worker * base + min(worker, extra)
    return first, first + base + (1 if worker < extra else 0)


def worker_batches_done(batches_done: int, num_workers: int, worker: int, worker_count: int) -> int:
    """Batches worker ``worker`` (of ``worker_count`` in its run) has made when the rank yielded ``batches_done``."""
    if batches_done <= worker:
        return 0
    return min(worker_count, -(-(batches_done - worker) // num_workers))
