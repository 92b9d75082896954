"""Categorical encodings: raw 64-bit keys -> embedding-table rows (``hash``, ``vocab``, ``integer``).

Raw keys are ``uint64``: the value of a Criteo hex field, a BLAKE2b hash of a CSV string, or the
integer itself (``integer`` mode). Row 0 is reserved for a missing value in ``hash`` and ``vocab``
modes; ``vocab`` also reserves row 1 for out-of-vocabulary values and gives rows 2.. to the values
seen at least ``min_count`` times in the training input, most frequent first (ties by key), as many
as the table holds. Counting keeps sorted (key, count) arrays and merges chunk counts in batches
whose size doubles, so memory is O(distinct values), never O(rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recscale.data.hashing import mix64

MISSING_ROW = 0
OOV_ROW = 1
RESERVED_ROWS = 2


def hash_rows(keys: np.ndarray, num_rows: int) -> np.ndarray:
    """``hash`` mode: 1 + mix64(key) % (rows - 1) as int64 (row 0 stays for missing values)."""
    return (mix64(keys) % np.uint64(num_rows - 1)).astype(np.int64) + 1


def _merge(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal keys: sorted unique keys and their counts."""
    if len(keys) == 0:
        return keys, counts
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


class VocabCounter:
    """Counts of the raw keys of one feature, merged in doubling batches (see the module docstring)."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.counts = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, keys: np.ndarray) -> None:
        """Count ``keys`` (uint64, missing values already removed)."""
        unique, counts = np.unique(keys, return_counts=True)
        self._pending.append((unique, counts.astype(np.int64)))
        self._pending_size += len(unique)
        if self._pending_size > max(len(self.keys), 1 << 20):
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
            counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
            self.keys, self.counts = _merge(keys, counts)
            self._pending, self._pending_size = [], 0

    def distinct(self) -> int:
        """Distinct keys counted so far."""
        self._flush()
        return len(self.keys)

    def build(self, min_count: int, num_rows: int) -> Vocab:
        """The vocabulary: keys seen at least ``min_count`` times, most frequent first, at most ``rows - 2``."""
        self._flush()
        keep = self.counts >= min_count
        keys, counts = self.keys[keep], self.counts[keep]
        order = np.lexsort((keys, -counts))[: max(num_rows - RESERVED_ROWS, 0)]
        return Vocab.from_ranked(keys[order], counts[order], distinct=len(self.keys), frequent=int(keep.sum()))


@dataclass
class Vocab:
    """A key -> row lookup (sorted keys for ``searchsorted``)."""

    keys: np.ndarray
    """Sorted uint64 keys."""
    rows: np.ndarray
    """Row of each key (int64, >= 2)."""
    counts: np.ndarray
    """Training count of each key."""
    distinct: int = 0
    """Distinct keys seen while counting."""
    frequent: int = 0
    """Distinct keys seen at least ``min_count`` times (more than ``len(keys)`` when the table was too small)."""

    @staticmethod
    def from_ranked(keys: np.ndarray, counts: np.ndarray, distinct: int, frequent: int) -> Vocab:
        """From keys in rank order (most frequent first)."""
        rows = np.arange(RESERVED_ROWS, RESERVED_ROWS + len(keys), dtype=np.int64)
        order = np.argsort(keys)
        return Vocab(keys[order], rows[order], counts[order], distinct, frequent)

    @property
    def size(self) -> int:
        """Rows the vocabulary uses, reserved rows included."""
        return len(self.keys) + RESERVED_ROWS

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (``OOV_ROW`` for unknown keys) as int64."""
        if len(self.keys) == 0:
            return np.full(len(keys), OOV_ROW, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.rows[at], OOV_ROW)

    def save(self, path: Path) -> None:
        """Write to ``path`` (``.npz``), through a temporary name."""
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, keys=self.keys, rows=self.rows, counts=self.counts, meta=np.array([self.distinct, self.frequent]))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> Vocab:
        """Read a vocabulary written by ``save``."""
        with np.load(path) as data:
            distinct, frequent = (int(v) for v in data["meta"])
            return Vocab(data["keys"], data["rows"], data["counts"], distinct, frequent)
