"""Ragged (list-of-ids) columns as numpy ``offsets`` + ``values``, with vectorised row operations.

A ``Ragged`` of n rows holds ``offsets [n + 1]`` (int64, starting at 0) and ``values [offsets[-1]]``;
row i is ``values[offsets[i]:offsets[i + 1]]``. Everything here is whole-array numpy, no per-row
Python, because these run on every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Ragged:
    """n variable-length rows of int64 (see the module docstring)."""

    offsets: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows n."""
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Ids per row ``[n]`` (int64)."""
        return np.diff(self.offsets)

    @staticmethod
    def from_lengths(lengths: np.ndarray, values: np.ndarray) -> Ragged:
        """From per-row lengths and the concatenated values."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Ragged(offsets, values)

    @staticmethod
    def from_arrow(array: pa.Array | pa.ChunkedArray) -> Ragged:
        """A (large) list array without nulls -> Ragged (offsets rebased to 0, values as int64)."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        offsets = np.asarray(array.offsets, dtype=np.int64)
        flat = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        values = np.array(flat.to_numpy(zero_copy_only=False))  # a writable copy (Arrow memory is read-only)
        return Ragged(offsets - offsets[0], values)

    def take(self, rows: np.ndarray) -> Ragged:
        """Rows ``rows`` (an index array) in that order."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        out = Ragged.from_lengths(lengths, np.empty(0, dtype=self.values.dtype))
        total = int(out.offsets[-1])
        if total == 0:
            out.values = np.empty(0, dtype=self.values.dtype)
            return out
        gather = np.arange(total, dtype=np.int64) + np.repeat(starts - out.offsets[:-1], lengths)
        out.values = self.values[gather]
        return out

    def slice(self, start: int, stop: int) -> Ragged:
        """Rows ``start:stop`` (values are a view)."""
        offsets = self.offsets[start : stop + 1]
        return Ragged(offsets - offsets[0], self.values[offsets[0] : offsets[-1]])

    def keep(self, max_len: int, newest: bool) -> Ragged:
        """At most ``max_len`` ids per row: the first ones, or the last ones when ``newest``."""
        lengths = self.lengths
        if max_len <= 0 or len(lengths) == 0 or int(lengths.max()) <= max_len:
            return self
        kept = np.minimum(lengths, max_len)
        position = np.arange(len(self.values), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        if newest:
            mask = position >= np.repeat(lengths - kept, lengths)
        else:
            mask = position < max_len
        return Ragged.from_lengths(kept, self.values[mask])

    def row_of_value(self) -> np.ndarray:
        """For each value, the row it belongs to ``[len(values)]``."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), self.lengths)

    def mask_rows(self, keep: np.ndarray) -> Ragged:
        """Rows with ``keep`` False become empty (the others are unchanged)."""
        lengths = np.where(keep, self.lengths, 0)
        return Ragged.from_lengths(lengths, self.values[np.repeat(keep, self.lengths)])
