"""Decode a run of one rank's batches: read the windows it covers, shuffle them, cut batches.

``BatchStream`` is what one process (the training process, or one loader worker) runs. It holds no
position of its own: it is told which batches to make, and everything it yields is a pure function
of the epoch plan (``recscale.data.partition``), so the reader's state is two integers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recscale.data.assemble import Piece, assemble
from recscale.data.batch import Batch
from recscale.data.columns import column_specs
from recscale.data.decode import Columns, DecodeSpec, decode, empty_columns
from recscale.data.errors import BadRowCounter, DataError, RowLocation
from recscale.data.partition import Catalog, EpochPlan, Window, window_permutation

OPEN_FILES = 16
"""Parquet files kept open per process (least recently used are closed)."""


class DecodedWindow:
    """A window's row-group slices, decoded, kept apart (joining them would copy the whole window).

    Window row i lives in the part whose first row (``starts``) is the last one <= i.
    """

    def __init__(self, parts: list[Columns]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [p.num_rows for p in parts[:-1]])

    def pieces(self, order: np.ndarray | None, lo: int, hi: int) -> list[Piece]:
        """Window rows ``order[lo:hi]`` (``lo:hi`` unshuffled) as pieces, grouped by part.

        Within a shuffled batch the rows are grouped by part, a fixed function of the permutation: the
        batch holds the same examples, and the order inside a batch does not matter to training.
        """
        if order is None:
            out: list[Piece] = []
            for part, start in zip(self.parts, self.starts):
                a, b = max(lo, start), min(hi, start + part.num_rows)
                if a < b:
                    out.append((part, slice(int(a - start), int(b - start))))
            return out
        rows = order[lo:hi]
        if len(self.parts) == 1:
            return [(self.parts[0], rows)]
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        return [
            (part, rows[part_of == p] - self.starts[p]) for p, part in enumerate(self.parts) if (part_of == p).any()
        ]


@dataclass(frozen=True)
class StreamKey:
    """What seeds the in-buffer shuffle: the stream is a pure function of these."""

    seed: int
    epoch: int
    rank: int
    world_size: int


class BatchStream:
    """Makes batches ``[first, stop)`` of one rank's epoch plan, starting at batch ``start``.

    Args:
        catalog: the row groups.
        plan: this rank's epoch plan.
        key: seeds of the in-buffer shuffle.
        spec: how rows are decoded and checked.
        counter: where skipped bad rows are counted.
    """

    def __init__(
        self, catalog: Catalog, plan: EpochPlan, key: StreamKey, spec: DecodeSpec, counter: BadRowCounter
    ) -> None:
        self.catalog = catalog
        self.plan = plan
        self.key = key
        self.spec = spec
        self.counter = counter
        self.columns = [c.name for c in column_specs(spec.features, spec.with_oracle)]
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    def batches(self, first: int, stop: int) -> Iterator[Batch]:
        """Yield rank batches ``first .. stop - 1`` (each ``plan.batch_size`` rows, the tail padded)."""
        size = self.plan.batch_size
        begin, end = first * size, min(stop * size, self.plan.rows)
        pending: list[Piece] = []
        pending_rows = 0
        made = first
        for window, order, lo, hi in self._segments(begin, end):
            at = lo
            while at < hi:
                take = min(size - pending_rows, hi - at)
                pending += window.pieces(order, at, at + take)
                pending_rows += take
                at += take
                if pending_rows == size:
                    yield assemble(pending, 0, self.spec.features)
                    made += 1
                    pending, pending_rows = [], 0
        while made < stop:  # the padded tail (pad mode): part-real, then padding only
            if not pending:
                pending = [(empty_columns(self.spec.features, self.spec.with_oracle), slice(0, 0))]
            yield assemble(pending, size - pending_rows, self.spec.features)
            made += 1
            pending, pending_rows = [], 0

    def _segments(self, begin: int, end: int) -> Iterator[tuple[DecodedWindow, np.ndarray | None, int, int]]:
        """``(window, order, lo, hi)`` per window: emit window rows ``order[lo:hi]`` (or ``lo:hi``)."""
        if begin >= end:
            return
        windows = self.plan.windows
        for w in windows[self.plan.window_at(begin) :]:
            if w.first_row >= end:
                break
            decoded = self._decode_window(w)
            order = (
                window_permutation(w, self.key.seed, self.key.epoch, self.key.rank, self.key.world_size)
                if self.plan.shuffle
                else None
            )
            lo = max(begin, w.first_row) - w.first_row
            hi = min(end, w.first_row + w.num_rows) - w.first_row
            yield decoded, order, lo, hi

    def _decode_window(self, window: Window) -> DecodedWindow:
        parts = []
        for s in window.slices:
            file_index = int(self.catalog.group_file[s.group])
            row_group = int(self.catalog.group_index[s.group])
            file = self.catalog.files[file_index]
            table = self._read(file_index, row_group)
            if s.start or s.stop != table.num_rows:
                table = table.slice(s.start, s.num_rows)
            parts.append(decode(table, self.spec, RowLocation(file, row_group, s.start), self.counter))
        return DecodedWindow(parts)

    def _read(self, file_index: int, row_group: int) -> pa.Table:
        file = self.catalog.files[file_index]
        try:
            handle = self._files.get(file_index)
            if handle is None:
                handle = pq.ParquetFile(file)
                self._files[file_index] = handle
                if len(self._files) > OPEN_FILES:
                    self._files.popitem(last=False)[1].close()
            else:
                self._files.move_to_end(file_index)
            return handle.read_row_group(row_group, columns=self.columns, use_threads=False)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{file}: row group {row_group} cannot be read (truncated or corrupt?): {err}") from None

    def close(self) -> None:
        """Close the open Parquet files."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
