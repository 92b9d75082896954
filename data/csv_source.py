"""CSV with a header (BARS / FuxiCTR style: Frappe_x1, Avazu_x1, Ali-CCP, Taobao) -> ``RawRows``.

The column roles come from ``data.features``: its label, dense, sparse, sequence, timestamp and domain
names are CSV header names; other CSV columns are ignored. Categorical values are strings: in
``hash`` and ``vocab`` modes their key is a stable 64-bit hash of the text (so ``"0123"`` and ``"123"``
differ), in ``integer`` mode they must be integers and are used as table rows. A sequence cell holds
ids separated by ``data.convert.sequence_separator`` (``1^5^9``; empty = no events), oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recscale.configs.schema import DataConfig
from recscale.data.columns import column_specs
from recscale.data.convert import InputFile, Parser
from recscale.data.errors import BadRowCounter, DataError, RowLocation
from recscale.data.hashing import hash_strings
from recscale.data.ragged import Ragged
from recscale.data.raw import RawRows, RowChecks, parse_floats, parse_integers, parse_labels, transform_dense
from recscale.data.remap import source_column
from recscale.data.text_source import TextBlocks, read_header

BLOCK_MB = 16


def _string_keys(array: pa.Array) -> np.ndarray:
    """uint64 keys of strings: hash each distinct value once (``dictionary_encode``), then gather."""
    encoded = pc.dictionary_encode(pc.fill_null(array, ""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    keys = hash_strings(encoded.dictionary.to_pylist())
    return keys[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


def _categorical(array: pa.Array, column: str, integer: bool, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 keys, missing mask)`` of one categorical column."""
    if integer:
        values, missing = parse_integers(array, column, checks)
        return values.astype(np.uint64), missing
    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    return _string_keys(array), missing


def _sequence(array: pa.Array, column: str, separator: str, integer: bool, checks: RowChecks) -> Ragged:
    """A separator-joined cell per row -> Ragged of keys (empty cell = no events)."""
    lists = pc.split_pattern(pc.fill_null(array, ""), separator)
    lengths = np.asarray(pc.list_value_length(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(lists)
    empty = np.asarray(pc.equal(flat, "").to_numpy(zero_copy_only=False))
    # "" alone is an empty history; an empty item inside a list ("1^^2") is a bad value
    lone = np.repeat(lengths == 1, lengths) & empty
    bad_item = empty & ~lone
    rows = np.repeat(np.arange(len(lengths)), lengths)
    bad_rows = np.zeros(len(lengths), dtype=bool)
    bad_rows[rows[bad_item]] = True
    checks.flag(column, "empty id in sequence", bad_rows, lambda i: f"an empty id in {array[i].as_py()!r}")
    kept = ~empty
    lengths = np.bincount(rows[kept], minlength=len(lengths)).astype(np.int64)
    items = flat.filter(pa.array(kept))
    if integer:
        item_checks = RowChecks(len(items), skip=True, locate=lambda i: RowLocation(""))
        values, _ = parse_integers(items, column, item_checks) if len(items) else (np.zeros(0, np.int64), None)
        bad_rows = np.zeros(len(lengths), dtype=bool)
        bad_rows[rows[kept][item_checks.bad]] = True
        checks.flag(column, "not an integer", bad_rows, lambda i: f"a non-integer id in {array[i].as_py()!r}")
        return Ragged.from_lengths(lengths, values.astype(np.uint64))
    return Ragged.from_lengths(lengths, _string_keys(items) if len(items) else np.zeros(0, np.uint64))


def _timestamps(array: pa.Array, column: str, separator: str, checks: RowChecks) -> Ragged:
    """Separator-joined integer timestamps per row."""
    keys = _sequence(array, column, separator, True, checks)
    return Ragged(keys.offsets, keys.values.astype(np.int64))


def csv_parser(data: DataConfig, block_mb: int = BLOCK_MB, delimiter: str = ",") -> Parser:
    """A parser of headed CSV files into ``RawRows`` for the converter."""
    f, c = data.features, data.convert
    skip = c.on_bad_row == "skip"
    integer = c.categorical == "integer"
    needed = list(dict.fromkeys(source_column(data, spec.name) for spec in column_specs(f, with_oracle=False)))

    def parse(item: InputFile, counter: BadRowCounter) -> Iterator[tuple[RawRows, int]]:
        header = read_header(item.path, delimiter)
        absent = [name for name in needed if name not in header]
        if absent:
            raise DataError(f"{item.path}: column {absent[0]!r} is missing; the header has {', '.join(header)}")
        blocks = TextBlocks(item.path, None, delimiter, needed, block_mb, skip, counter)
        for block, first in blocks:
            n = block.num_rows

            def locate(i: int, first: int = first) -> RowLocation:
                return RowLocation(str(item.path), None, blocks.line_of(first + i))

            checks = RowChecks(n, skip, locate)
            labels = np.stack(
                [parse_labels(block.column(name), name, checks, name in f.value_labels) for name in f.labels], axis=1
            )
            dense = np.empty((n, len(f.dense)), dtype=np.float32)
            dense_missing = {}
            for j, name in enumerate(f.dense):
                values, missing = parse_floats(block.column(name), name, checks)
                checks.flag(
                    name,
                    "non-finite dense",
                    ~np.isfinite(values),
                    lambda i, v=values: f"dense value {v[i]} is not finite",
                )
                dense[:, j] = transform_dense(values, missing, c.dense_transform, c.dense_missing)
                dense_missing[name] = int(missing.sum())
            keys, missing_ids = [], []
            for s in f.sparse:
                column = source_column(data, s.name)  # a double_graphhash feature reads its field's column
                k, m = _categorical(block.column(column), column, integer, checks)
                keys.append(k)
                missing_ids.append(m)
            sequences = [
                _sequence(block.column(q.ids), q.ids, c.sequence_separator, integer, checks) for q in f.sequences
            ]
            timestamps: list[Ragged | None] = []
            for q, seq in zip(f.sequences, sequences):
                if not q.timestamps:
                    timestamps.append(None)
                    continue
                times = _timestamps(block.column(q.timestamps), q.timestamps, c.sequence_separator, checks)
                checks.flag(
                    q.timestamps,
                    "timestamps length mismatch",
                    times.lengths != seq.lengths,
                    lambda i, a=seq.lengths, b=times.lengths: f"{b[i]} timestamps for {a[i]} events",
                )
                timestamps.append(times)
            domain = None
            if f.domain:
                values, missing = parse_integers(block.column(f.domain), f.domain, checks)
                checks.flag(
                    f.domain,
                    "bad domain",
                    missing | (values < 0),
                    lambda i, v=values: f"domain {v[i]} is not an id >= 0 (or is empty)",
                )
                domain = values
            yield (
                RawRows(
                    labels=labels,
                    dense=dense,
                    keys=keys,
                    missing=missing_ids,
                    sequences=sequences,
                    timestamps=timestamps,
                    domain=domain,
                    row_ids=np.arange(first, first + n, dtype=np.int64),
                    checks=checks,
                    dense_missing=dense_missing,
                ),
                blocks.position(),
            )

    return parse
