"""The conversion engine shared by ``recscale data convert criteo|csv``: raw rows -> Parquet + ``schema.json``.

A format module parses text blocks into ``RawRows``; this module encodes categorical keys into table
rows (``data.convert.categorical``), routes rows to ``train/`` or ``valid/`` (``--valid`` inputs, or a
seeded per-row split of ``valid_fraction``), and writes row groups of ``row_group_size`` into files of
``rows_per_file``. ``vocab`` mode reads the training input twice: once to count, once to encode. The
output directory appears atomically, with ``schema.json``: rows, label rates, skipped rows by reason,
missing / out-of-vocabulary counts and the table rows each feature needs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recscale.configs.loader import ConfigError, config_to_dict
from recscale.configs.remap import convert_problems
from recscale.configs.schema import DataConfig, EmbeddingsConfig
from recscale.data.columns import table_rows
from recscale.data.errors import BadRowCounter, DataError
from recscale.data.files import atomic_dir, write_json
from recscale.data.graphhash import EdgeCounter
from recscale.data.hashing import uniform01
from recscale.data.prepare import CONVERT_STATS
from recscale.data.ragged import Ragged
from recscale.data.raw import RawRows
from recscale.data.remap import REMAP_DIR, FieldRemaps
from recscale.data.vocab import MISSING_ROW, OOV_ROW, Vocab, VocabCounter, hash_rows

Split = Literal["train", "valid", "test", "auto"]


@dataclass(frozen=True)
class InputFile:
    """One input file and where its rows go (``auto``: split by ``valid_fraction``)."""

    path: Path
    split: Split
    index: int


Parser = Callable[[InputFile, BadRowCounter], Iterator[tuple[RawRows, int]]]
"""Yields ``(block, bytes of the file consumed so far)``; skipped lines are counted in the counter."""


class ParquetSink:
    """Writes tables as row groups of ``row_group_size`` into ``part-*.parquet`` files of ``rows_per_file``."""

    def __init__(self, out: Path, row_group_size: int, rows_per_file: int) -> None:
        self.out = out
        self.row_group_size = row_group_size
        self.groups_per_file = max(1, -(-rows_per_file // row_group_size))
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._groups = 0
        self._files = 0

    def write(self, table: pa.Table) -> None:
        """Buffer rows; write every full row group."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows < self.row_group_size:
            return
        rows = pa.concat_tables(self._pending)
        full = rows.num_rows - rows.num_rows % self.row_group_size
        for start in range(0, full, self.row_group_size):
            self._write_group(rows.slice(start, self.row_group_size))
        rest = rows.slice(full)
        self._pending, self._pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None or self._groups == self.groups_per_file:
            if self._writer is not None:
                self._writer.close()
            self.out.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.out / f"part-{self._files:05d}.parquet", group.schema)
            self._files += 1
            self._groups = 0
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._groups += 1
        self.rows += group.num_rows

    def close(self) -> None:
        """Write the last (short) row group and close the file."""
        if self._pending_rows:
            self._write_group(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        if self._writer is not None:
            self._writer.close()


class Encoder:
    """Raw keys -> rows for every sparse feature and sequence (see ``recscale.data.vocab``)."""

    def __init__(
        self,
        data: DataConfig,
        embeddings: EmbeddingsConfig,
        vocabs: dict[str, Vocab],
        remaps: FieldRemaps | None = None,
    ) -> None:
        self.mode = data.convert.categorical
        self.remaps = remaps or FieldRemaps(data, embeddings)
        rows = table_rows(embeddings)
        self.rows = {s.name: rows[s.table] for s in data.features.sparse}
        self.rows.update({q.ids: rows[q.table] for q in data.features.sequences})
        for name, num_rows in self.rows.items():
            if self.mode != "integer" and num_rows < 3 and name not in self.remaps.kinds:
                raise DataError(f"column {name!r}: its table has {num_rows} rows; hash and vocab need at least 3")
        self.vocabs = vocabs
        self.missing: Counter[str] = Counter()
        self.oov: Counter[str] = Counter()
        self.max_row: dict[str, int] = {}

    def encode(
        self, name: str, keys: np.ndarray, missing: np.ndarray | None, raw: RawRows, row_of: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows of ``keys`` (int64); ``row_of`` maps each key to its row (sequences).

        In ``integer`` mode a missing value or an id outside the table is a bad value of the row.
        """
        num_rows = self.rows[name]
        if missing is not None:
            self.missing[name] += int(missing.sum())
        if name in self.remaps.kinds:  # data.convert.fields: modulo, GraphHash or its hash feature
            out = self.remaps.encode(name, keys, missing)
        elif self.mode == "integer":
            out = keys.astype(np.int64)
            bad = (out < 0) | (out >= num_rows)
            if missing is not None:
                bad |= missing
            if bad.any():
                rows_bad = np.flatnonzero(bad) if row_of is None else row_of[bad]
                mask = np.zeros(raw.num_rows, dtype=bool)
                mask[rows_bad] = True
                shown = [
                    None if missing is not None and missing[k] else int(out[k]) for k in np.flatnonzero(bad)[:1000]
                ]
                first = {int(r): v for r, v in zip(rows_bad[: len(shown)][::-1], shown[::-1])}
                raw.checks.flag(
                    name,
                    "id missing or out of range",
                    mask,
                    lambda i: (
                        ("the id is missing" if first.get(i) is None else f"id {first[i]} is outside its table")
                        + f" (rows 0..{num_rows - 1}); categorical: integer needs ids < the table's rows"
                    ),
                )
                out = np.where(bad, 0, out)
        elif self.mode == "hash":
            out = hash_rows(keys, num_rows)
        else:
            out = self.vocabs[name].lookup(keys)
            known = out != OOV_ROW
            self.oov[name] += int((~known if missing is None else ~known & ~missing).sum())
        if missing is not None and self.mode != "integer" and name not in self.remaps.kinds:
            out = np.where(missing, MISSING_ROW, out)
        if len(out) and self.remaps.kinds.get(name) != "raw":  # raw ids are not rows
            self.max_row[name] = max(self.max_row.get(name, 0), int(out.max()))
        return out


def rows_table(data: DataConfig, raw: RawRows, encoder: Encoder) -> tuple[pa.Table, np.ndarray]:
    """Encode one block into the output Arrow table; returns it and the kept-row mask (bad rows dropped)."""
    f = data.features
    sparse = [encoder.encode(s.name, k, m, raw) for s, k, m in zip(f.sparse, raw.keys, raw.missing)]
    sequences = []
    for q, seq in zip(f.sequences, raw.sequences):
        sequences.append(Ragged(seq.offsets, encoder.encode(q.ids, seq.values, None, raw, seq.row_of_value())))
    keep = ~raw.checks.bad
    all_rows = bool(keep.all())
    columns: dict[str, pa.Array] = {}
    for t, name in enumerate(f.labels):
        values = raw.labels[keep, t]
        columns[name] = pa.array(values if name in f.value_labels else values.astype(np.int8))
    for j, name in enumerate(f.dense):
        columns[name] = pa.array(raw.dense[keep, j])
    for s, ids in zip(f.sparse, sparse):
        columns[s.name] = pa.array(ids[keep], type=pa.int64())
    for q, seq, times in zip(f.sequences, sequences, raw.timestamps):
        kept = seq if all_rows else seq.take(np.flatnonzero(keep))
        columns[q.ids] = pa.ListArray.from_arrays(pa.array(kept.offsets), pa.array(kept.values, type=pa.int64()))
        if q.timestamps:
            assert times is not None
            kept_t = times if all_rows else times.take(np.flatnonzero(keep))
            columns[q.timestamps] = pa.ListArray.from_arrays(pa.array(kept_t.offsets), pa.array(kept_t.values))
    if f.domain:
        assert raw.domain is not None
        columns[f.domain] = pa.array(raw.domain[keep])
    return pa.table(columns), keep


def _split_mask(item: InputFile, raw: RawRows, fraction: float, seed: int) -> np.ndarray:
    """True for rows that go to ``valid/``."""
    if item.split != "auto":
        return np.full(raw.num_rows, item.split == "valid")
    if fraction <= 0:
        return np.zeros(raw.num_rows, dtype=bool)
    return uniform01((np.int64(item.index) << np.int64(40)) + raw.row_ids, seed) < fraction


def _progress(inputs: list[InputFile], desc: str, enabled: bool) -> tqdm:
    total = sum(os.path.getsize(i.path) for i in inputs)
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None if enabled else True)


def count_vocabs(
    data: DataConfig,
    inputs: list[InputFile],
    parse: Parser,
    progress: bool,
    remaps: FieldRemaps | None = None,
    edges: EdgeCounter | None = None,
) -> dict[str, VocabCounter]:
    """Pass 1 of ``vocab`` mode and of GraphHash: count the keys of the training rows.

    With ``edges``, also count the positive user-item pairs of the training rows (``remaps.add_rows``).
    """
    names = [s.name for s in data.features.sparse] + [q.ids for q in data.features.sequences]
    counters = {name: VocabCounter() for name in names}
    train_inputs = [i for i in inputs if i.split not in ("valid", "test")]
    bar = _progress(train_inputs, "counting", progress)
    with bar:
        for item in train_inputs:
            consumed = 0
            for raw, position in parse(item, BadRowCounter()):
                train = ~_split_mask(item, raw, data.convert.valid_fraction, data.convert.split_seed) & ~raw.checks.bad
                if remaps is not None and edges is not None:
                    remaps.add_rows(edges, raw, train)
                for s, keys, missing in zip(data.features.sparse, raw.keys, raw.missing):
                    counters[s.name].add(keys[train & ~missing])
                for q, seq in zip(data.features.sequences, raw.sequences):
                    counters[q.ids].add(seq.values[train[seq.row_of_value()]])
                bar.update(position - consumed)
                consumed = position
    return counters


def convert(
    data: DataConfig,
    embeddings: EmbeddingsConfig,
    inputs: list[InputFile],
    parse: Parser,
    out_dir: Path,
    *,
    info: dict[str, object],
    vocab_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Convert ``inputs`` into ``out_dir/{train,valid}/`` + ``schema.json`` (+ ``vocab/``); returns the stats."""
    started = time.perf_counter()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty (choose another --out or remove it)")
    problems = convert_problems(data, embeddings)
    if problems:
        raise ConfigError("invalid config for the converter:\n  " + "\n  ".join(problems))
    c = data.convert
    vocabs: dict[str, Vocab] = {}
    remaps = FieldRemaps(data, embeddings)
    counters: dict[str, VocabCounter] = {}
    names = [s.name for s in data.features.sparse] + [q.ids for q in data.features.sequences]
    vocab_names = [name for name in names if name not in remaps.raw]  # raw ids need no vocabulary
    if vocab_dir is not None:
        if c.categorical == "vocab":
            vocabs = {name: _load_vocab(vocab_dir, name) for name in vocab_names}
        if remaps.needs_graph:
            remaps.load(vocab_dir.parent / REMAP_DIR)
    elif c.categorical == "vocab" or remaps.kinds:
        edges = EdgeCounter() if remaps.needs_graph else None
        counters = count_vocabs(data, inputs, parse, progress, remaps, edges)
        if c.categorical == "vocab":
            rows = Encoder(data, embeddings, {}, remaps).rows
            vocabs = {name: counters[name].build(c.min_count, rows[name]) for name in vocab_names}
        if edges is not None:
            remaps.build(edges)
    encoder = Encoder(data, embeddings, vocabs, remaps)
    counter = BadRowCounter()
    dense_missing: Counter[str] = Counter()
    splits = ("train", "valid", "test") if any(i.split == "test" for i in inputs) else ("train", "valid")
    label_sums = {split: np.zeros(len(data.features.labels)) for split in splits}
    with atomic_dir(out_dir) as tmp:
        sinks = {split: ParquetSink(tmp / split, c.row_group_size, c.rows_per_file) for split in splits}
        bar = _progress(inputs, "converting", progress)
        with bar:
            for item in inputs:
                consumed = 0
                for raw, position in parse(item, counter):
                    table, keep = rows_table(data, raw, encoder)
                    raw.checks.count_into(counter)
                    dense_missing.update(raw.dense_missing)
                    to_valid = _split_mask(item, raw, c.valid_fraction, c.split_seed)[keep]
                    routes = [("train", ~to_valid), ("valid", to_valid)]
                    if item.split == "test":  # a held-out file: every row to test/
                        routes = [("test", np.ones_like(to_valid))]
                    for split, mask in routes:
                        if mask.any():
                            part = table if mask.all() else table.filter(pa.array(mask))
                            sinks[split].write(part)
                            label_sums[split] += raw.labels[keep][mask].sum(axis=0)
                    bar.update(position - consumed)
                    consumed = position
        for sink in sinks.values():
            sink.close()
        if c.categorical == "vocab":
            (tmp / "vocab").mkdir()
            for name, vocab in vocabs.items():
                vocab.save(tmp / "vocab" / f"{name}.npz")
        remaps.save(tmp / REMAP_DIR)
        stats = _stats(data, embeddings, inputs, sinks, label_sums, counter, dense_missing, encoder, vocabs, info)
        if remaps.kinds:
            stats |= _remap_stats(remaps, counters, stats)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        write_json(tmp / CONVERT_STATS, stats)
    return stats


def _remap_stats(remaps: FieldRemaps, counters: dict[str, VocabCounter], stats: dict[str, object]) -> dict[str, object]:
    """``remap`` (per remapped feature: rows used against a full table) and ``graphhash`` (the clustering)."""
    features = stats["features"]
    assert isinstance(features, dict)
    remap = {}
    for name in remaps.kinds:
        counted = counters.get(name)
        remap[name] = remaps.describe(name, counted.distinct() if counted is not None else None)
        features[name] |= remap[name]
    return {"remap": remap, "remap_spec": remaps.spec(), "graphhash": remaps.graph}


def _load_vocab(vocab_dir: Path, name: str) -> Vocab:
    path = vocab_dir / f"{name}.npz"
    if not path.is_file():
        raise DataError(
            f"{path}: no vocabulary for column {name!r} (expected the vocab/ folder of an earlier conversion)"
        )
    return Vocab.load(path)


def _stats(
    data: DataConfig,
    embeddings: EmbeddingsConfig,
    inputs: list[InputFile],
    sinks: dict[str, ParquetSink],
    label_sums: dict[str, np.ndarray],
    counter: BadRowCounter,
    dense_missing: Counter[str],
    encoder: Encoder,
    vocabs: dict[str, Vocab],
    info: dict[str, object],
) -> dict[str, object]:
    f = data.features
    tables = {s.name: s.table for s in f.sparse} | {q.ids: q.table for q in f.sequences}
    features = {}
    for name, table in tables.items():
        entry: dict[str, object] = {"table": table, "table_rows": encoder.rows[name]}
        if name in vocabs:
            v = vocabs[name]
            entry |= {
                "rows_needed": v.size,
                "distinct_values": v.distinct,
                "frequent_values": v.frequent,
                "oov_values": encoder.oov[name],
            }
        elif name not in encoder.remaps.raw:
            entry["rows_needed"] = encoder.max_row.get(name, 0) + 1
        entry["missing_values"] = encoder.missing[name]
        features[name] = entry
    rows = {split: sink.rows for split, sink in sinks.items()}
    return {
        **info,
        "inputs": {
            split: [str(i.path) for i in inputs if i.split == split] for split in ("train", "valid", "test", "auto")
        },
        "rows": rows,
        "label_rate": {
            split: dict(zip(f.labels, (label_sums[split] / max(rows[split], 1)).tolist())) for split in rows
        },
        **counter.as_dict(),
        "dense_missing": dict(sorted(dense_missing.items())),
        "features": features,
        "table_rows": table_rows(embeddings),
        "convert": config_to_dict(data.convert),
        "feature_schema": config_to_dict(f),
    }
