"""User-facing data errors and the counters of skipped rows.

Every problem with input data names where it is: the file, the row group (Parquet) or line (text),
the row, and the column. ``BadRowCounter`` keeps what ``on_bad_row: skip`` left out, by column and
reason, so nothing is dropped without a trace.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says where and what was expected."""


@dataclass(frozen=True)
class RowLocation:
    """Where one example came from."""

    file: str
    """Path of the input file."""
    row_group: int | None = None
    """Parquet row group (None for text input)."""
    row: int | None = None
    """Row within the row group (Parquet) or 1-based line number (text)."""

    def describe(self) -> str:
        """``file: row group 3, row 17`` or ``file: line 42``."""
        if self.row_group is None:
            return f"{self.file}: line {self.row}" if self.row is not None else self.file
        where = f"{self.file}: row group {self.row_group}"
        return f"{where}, row {self.row}" if self.row is not None else where


def bad_value_error(location: RowLocation, column: str, problem: str) -> DataError:
    """The error raised for one bad value under ``on_bad_row: error``."""
    return DataError(
        f"{location.describe()}: column {column!r}: {problem} (set on_bad_row: skip to skip such rows and count them)"
    )


@dataclass
class BadRowCounter:
    """Rows left out under ``on_bad_row: skip``: the total and a count per ``column: reason``."""

    rows: int = 0
    """Rows skipped (a row with several bad values counts once)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Bad values by ``column: reason``."""

    def add(self, rows: int, reasons: dict[str, int]) -> None:
        """Count ``rows`` skipped rows and their bad values."""
        self.rows += rows
        self.reasons.update({k: v for k, v in reasons.items() if v})

    def merge(self, other: BadRowCounter) -> None:
        """Add another counter (e.g. a loader worker's) into this one."""
        self.add(other.rows, dict(other.reasons))

    def as_dict(self) -> dict[str, object]:
        """Plain data for JSON stats: ``{"skipped_rows": n, "skipped_by_reason": {...}}``."""
        return {"skipped_rows": self.rows, "skipped_by_reason": dict(sorted(self.reasons.items()))}
