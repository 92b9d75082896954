"""Parsed raw rows shared by the converters, and the vectorised parsers of string columns.

A converter turns each block of text into ``RawRows``: labels, dense values (transformed, missing
filled), categorical *keys* (uint64, see ``recscale.data.vocab``) with their missing masks, and
sequences of keys. ``RowChecks`` collects bad values: under ``on_bad_row: error`` the first one raises
naming file, line and column; under ``skip`` the row is marked and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recscale.data.errors import BadRowCounter, RowLocation, bad_value_error
from recscale.data.ragged import Ragged

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
MAX_HEX_DIGITS = 16


@dataclass
class RawRows:
    """One parsed block of n rows, before categorical encoding."""

    labels: np.ndarray
    """``[n, T]`` float32 (checked 0/1)."""
    dense: np.ndarray
    """``[n, N]`` float32 (transformed; missing values filled)."""
    keys: list[np.ndarray]
    """Per sparse feature: raw keys ``[n]`` uint64."""
    missing: list[np.ndarray]
    """Per sparse feature: the value is empty ``[n]`` bool."""
    sequences: list[Ragged]
    """Per sequence: raw keys (uint64 values)."""
    timestamps: list[Ragged | None]
    """Per sequence: int64 timestamps, when the schema has them."""
    domain: np.ndarray | None
    """``[n]`` int64."""
    row_ids: np.ndarray
    """Index of each row among the file's parsed rows ``[n]`` (split seeding, line numbers)."""
    checks: RowChecks
    """Bad rows found so far (and the way to locate a row)."""
    dense_missing: dict[str, int] = field(default_factory=dict)
    """Empty dense fields per column in this block."""

    @property
    def num_rows(self) -> int:
        """Rows n."""
        return len(self.row_ids)


class RowChecks:
    """Bad values of one block (see the module docstring).

    Args:
        n: rows in the block.
        skip: skip bad rows (else raise on the first).
        locate: the location of row i of the block.
    """

    def __init__(self, n: int, skip: bool, locate: Callable[[int], RowLocation]) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.skip = skip
        self.locate = locate
        self.reasons: dict[str, int] = {}

    def flag(self, column: str, reason: str, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        """Mark rows ``mask`` bad because of ``column``; raise for the first under ``on_bad_row: error``."""
        if not mask.any():
            return
        if not self.skip:
            row = int(np.argmax(mask))
            raise bad_value_error(self.locate(row), column, describe(row))
        self.bad |= mask
        key = f"{column}: {reason}"
        self.reasons[key] = self.reasons.get(key, 0) + int(mask.sum())

    def count_into(self, counter: BadRowCounter) -> None:
        """Add this block's skipped rows to ``counter``."""
        counter.add(int(self.bad.sum()), self.reasons)


def _text(array: pa.Array, i: int) -> str:
    value = array[i].as_py()
    return "(empty)" if value is None else repr(str(value)[:40])


def parse_labels(array: pa.Array, column: str, checks: RowChecks, real: bool = False) -> np.ndarray:
    """A label column of strings -> float32 ``[n]``; anything but 0 / 1 (empty included) is a bad value.

    ``real``: a regression target, where any finite number is a label (empty or not a number is bad).
    """
    try:
        numbers = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numbers = [_float_or_nan(text) for text in array.to_pylist()]  # slow path: the block has a bad label
    values = np.asarray(numbers, dtype=np.float64)
    if real:
        bad = ~np.isfinite(values)
        checks.flag(column, "label not a number", bad, lambda i: f"label {_text(array, i)} is not a finite number")
        return np.where(bad, 0, values).astype(np.float32)
    bad = ~((values == 0) | (values == 1))
    checks.flag(column, "label not 0/1", bad, lambda i: f"label {_text(array, i)} is not 0 or 1")
    return np.where(bad, 0, values).astype(np.float32)


def _float_or_nan(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")


def parse_integers(array: pa.Array, column: str, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
    """Strings of integers -> ``(int64 values, missing mask)``; empty = missing, non-integers are bad."""
    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    try:
        numbers = pc.cast(array, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.fill_null(pc.match_substring_regex(array, r"^[+-]?[0-9]{1,18}$"), True)
        bad = ~np.asarray(ok.to_numpy(zero_copy_only=False))
        checks.flag(column, "not an integer", bad, lambda i: f"{_text(array, i)} is not an integer")
        numbers = pc.cast(pc.if_else(ok, array, None), pa.int64())
    values = np.asarray(pc.fill_null(numbers, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, missing


def parse_floats(array: pa.Array, column: str, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
    """Strings of numbers -> ``(float64 values, missing mask)``; empty = missing, non-numbers are bad."""
    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    try:
        numbers = pc.cast(array, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        texts = array.to_pylist()
        values = np.zeros(len(texts))
        bad = np.zeros(len(texts), dtype=bool)
        for i, text in enumerate(texts):  # slow path, only for a block that holds a bad value
            if text is None:
                continue
            try:
                values[i] = float(text)
            except ValueError:
                bad[i] = True
        checks.flag(column, "not a number", bad, lambda i: f"{_text(array, i)} is not a number")
        return values, missing
    values = np.asarray(pc.fill_null(numbers, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, missing


def parse_hex(array: pa.Array, column: str, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
    """Hex strings (Criteo categorical fields) -> ``(uint64 keys, missing mask)``, vectorised over bytes."""
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    n = len(array)
    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, dtype=np.uint8)
    lengths = np.where(missing, 0, np.diff(offsets))
    too_long = lengths > MAX_HEX_DIGITS
    width = int(min(lengths.max(initial=0), MAX_HEX_DIGITS))
    keys = np.zeros(n, dtype=np.uint64)
    invalid = too_long.copy()
    for j in range(width):
        inside = (j < lengths) & ~too_long
        chars = data[np.minimum(offsets[:-1] + j, len(data) - 1)]
        nibble = _HEX[chars]
        invalid |= inside & (nibble == 255)
        keys = np.where(inside, (keys << np.uint64(4)) | nibble.astype(np.uint64), keys)
    checks.flag(column, "invalid hex", invalid, lambda i: f"{_text(array, i)} is not a hexadecimal id")
    return keys, missing


def transform_dense(values: np.ndarray, missing: np.ndarray, transform: str, fill: float) -> np.ndarray:
    """``log1p``: log(1 + max(x, 0)); ``none``: x. Missing values become ``fill`` (not transformed)."""
    if transform == "log1p":
        values = np.log1p(np.maximum(values, 0.0))
    return np.where(missing, fill, values).astype(np.float32)
