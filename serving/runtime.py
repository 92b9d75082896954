"""Load an exported artifact and score rows with it: needs torch, numpy and pyarrow, never recscale.

This file is copied into every artifact as ``serve.py``, so a serving host can do::

    import serve                                   # or: from recscale.serving import load
    model = serve.load("artifact/")
    p = model.predict({"dense_0": [0.1, 0.2], "user": [3, 7], "item": [[1, 2], []]})   # [2, T] float32
    serve.predict_file("artifact/", "rows.parquet", "preds.parquet")

Rows are read the way recscale's training reader reads prepared Parquet: dense columns as float32
(they must be finite), a sparse column as an integer (one id; null = empty bag) or a list of integers
(null = empty bag, the first ``max_ids`` kept), ids mapped into the table by the feature's hashing
(``none``: an id outside the table is an error, ``modulo``, ``hash``: SplitMix64 then modulo). A
feature of a ``collisions: managed`` table brings raw int64 ids, mapped to slots by the table's slot map
frozen at export (``managed/<table>.npz``, ``managed_slots``). The
graph (``model.pt2``, ``torch.export``) takes ``dense [B, N]`` and, per sparse feature in
``features.json`` order, ``values [nnz]`` and ``offsets [B]`` (int64, where each row's bag starts),
and returns probabilities ``[B, T]``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

GRAPH = "model.pt2"
FEATURES = "features.json"
MANIFEST = "manifest.json"
ARTIFACT_FORMAT = 1

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class ServingError(ValueError):
    """Bad input or a bad artifact (one line naming the file, column or key)."""


def _mix64(keys: np.ndarray) -> np.ndarray:
    """SplitMix64 of each key (uint64): the converter's and the training reader's id hash.

    A copy of ``recscale.data.hashing.mix64`` (as the CSV reading below mirrors ``data/text_source.py``):
    this file runs in artifacts without recscale; tests compare the two bit for bit.
    """
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def map_ids(ids: np.ndarray, hashing: str, rows: int) -> np.ndarray:
    """Raw int64 ids -> table rows, exactly as training did (``hashing: hash`` is SplitMix64 % rows)."""
    if hashing == "none":
        return ids
    if hashing == "modulo":
        return np.mod(ids, rows)
    return (_mix64(ids) % np.uint64(rows)).astype(np.int64)


def managed_slots(
    ids: np.ndarray, slot_map: tuple[np.ndarray, np.ndarray], rows: int, input_hash_size: int
) -> np.ndarray:
    """Raw ids ``[n]`` int64 -> slots ``[n]`` of a managed-collision table, as training's evaluation maps them.

    ``slot_map`` = (the admitted ids ``[m]`` sorted, their slots ``[m]``). An id is first reduced to
    ``id mod input_hash_size`` (non-negative, like ``torch.remainder``); an admitted one reads its slot,
    any other the shared slot ``rows - 1``.
    """
    admitted, slots = slot_map
    keys = np.mod(ids.astype(np.int64), np.int64(input_hash_size))
    out = np.full(keys.shape, rows - 1, dtype=np.int64)
    if len(admitted):
        at = np.minimum(np.searchsorted(admitted, keys), len(admitted) - 1)
        found = admitted[at] == keys
        out[found] = slots[at[found]]
    return out


def _column(batch: Any, name: str, where: str) -> Any:
    """Column ``name`` of a dict or a pyarrow table / record batch, as a pyarrow array."""
    import pyarrow as pa

    try:
        value = batch[name] if isinstance(batch, dict) else batch.column(name)
    except (KeyError, IndexError):  # a dict, or pyarrow's unknown field
        raise ServingError(f"{where}: missing column {name!r}") from None
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    if isinstance(value, pa.Array):
        return value
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    try:
        return pa.array(value.tolist() if isinstance(value, np.ndarray) else list(value))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise ServingError(f"{where}: column {name!r}: {err}") from None


def _bags(
    array: Any, spec: dict[str, Any], where: str, managed: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A sparse column -> (ids [nnz] int64 mapped into the table, offsets [B] int64).

    ``managed``: the feature's table's slot map (``slot_map``, ``rows``, ``input_hash_size``) when the table
    is ``collisions: managed`` (the ids are then raw: any int64).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    name, n = spec["name"], len(array)
    if pa.types.is_integer(array.type):
        valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = valid.astype(np.int64)
        ids = np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False), dtype=np.int64)[valid]
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        if not pa.types.is_integer(array.type.value_type):
            raise ServingError(f"{where}: column {name!r} is a list of {array.type.value_type}, expected integers")
        lengths = np.asarray(pc.fill_null(pc.list_value_length(array), 0).to_numpy(), dtype=np.int64)
        flat = pc.list_flatten(array)
        if flat.null_count:
            raise ServingError(f"{where}: column {name!r} has a null id inside a list")
        ids = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int64)
        if spec["max_ids"] > 0 and n and int(lengths.max(initial=0)) > spec["max_ids"]:
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            keep = np.arange(len(ids), dtype=np.int64) - starts < spec["max_ids"]
            ids, lengths = ids[keep], np.minimum(lengths, spec["max_ids"])
    else:
        raise ServingError(f"{where}: column {name!r} has type {array.type}, expected an integer or a list of them")
    if managed is not None:  # raw ids: any int64, each to its slot
        slots = managed_slots(ids, managed["slot_map"], managed["rows"], managed["input_hash_size"])
        return slots, np.cumsum(lengths) - lengths
    ids = map_ids(ids, spec["hashing"], spec["rows"])
    bad = (ids < 0) | (ids >= spec["rows"])
    if bad.any():
        row = int(np.searchsorted(np.cumsum(lengths), np.nonzero(bad)[0][0], side="right"))
        raise ServingError(
            f"{where}: column {name!r}, row {row}: id {int(ids[bad][0])} is outside table {spec['table']!r} "
            f"(rows 0..{spec['rows'] - 1}) and hashing is 'none'"
        )
    return ids, np.cumsum(lengths) - lengths


class Predictor:
    """An exported model with its feature spec: rows in, probabilities ``[B, T]`` out.

    Args:
        path: the artifact directory (``model.pt2``, ``features.json``, ``manifest.json``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        for name in (GRAPH, FEATURES, MANIFEST):
            if not (self.path / name).is_file():
                raise ServingError(f"{self.path}: not a recscale artifact (no {name})")
        self.features: dict[str, Any] = json.loads((self.path / FEATURES).read_text())
        self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST).read_text())
        if self.manifest.get("format") != ARTIFACT_FORMAT:
            raise ServingError(f"{self.path / MANIFEST}: artifact format {self.manifest.get('format')}, expected 1")
        self.labels: list[str] = list(self.features["labels"])
        tasks = self.features.get("tasks") or [{"name": label, "loss": "bce"} for label in self.labels]
        self.outputs: list[str] = [("pred_" if t["loss"] == "regression" else "p_") + t["name"] for t in tasks]
        """Output column per task: ``p_<task>`` (a probability) or ``pred_<task>`` (a regression value)."""
        self.managed = {
            table: self._slot_map(table, entry) for table, entry in self.features.get("managed", {}).items()
        }
        """Per ``collisions: managed`` table: its frozen slot map, rows and input_hash_size."""
        self.module = torch.export.load(str(self.path / GRAPH)).module()

    def _slot_map(self, table: str, entry: dict[str, Any]) -> dict[str, Any]:
        path = self.path / entry["file"]
        if not path.is_file():
            raise ServingError(f"{path}: missing slot map of managed-collision table {table!r} (see {FEATURES})")
        with np.load(path) as data:
            ids, slots = np.asarray(data["ids"], dtype=np.int64), np.asarray(data["slots"], dtype=np.int64)
        if ids.shape != slots.shape or (len(ids) > 1 and not (np.diff(ids) > 0).all()):
            raise ServingError(f"{path}: a slot map needs ids [n] sorted ascending and slots [n]")
        return {"slot_map": (ids, slots), "rows": int(entry["rows"]), "input_hash_size": int(entry["input_hash_size"])}

    def inputs(self, batch: Any, where: str = "batch") -> tuple[torch.Tensor, ...]:
        """The graph's inputs for ``batch`` (a dict of columns, or a pyarrow table / record batch)."""
        dense_names = self.features["dense"]
        columns = [_column(batch, name, where) for name in dense_names]
        sparse = [_column(batch, spec["name"], where) for spec in self.features["sparse"]]
        sizes = {len(c) for c in columns + sparse}
        if len(sizes) > 1:
            raise ServingError(f"{where}: columns have different lengths {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        dense = np.zeros((n, len(dense_names)), dtype=np.float32)
        for j, (name, col) in enumerate(zip(dense_names, columns)):
            values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
            if not np.isfinite(values).all():
                row = int(np.nonzero(~np.isfinite(values))[0][0])
                raise ServingError(f"{where}: column {name!r}, row {row}: dense value {values[row]} is not finite")
            dense[:, j] = values
        out: list[torch.Tensor] = [torch.from_numpy(dense)]
        for spec, col in zip(self.features["sparse"], sparse):
            managed = self.managed.get(spec["table"]) if spec.get("collisions") == "managed" else None
            ids, offsets = _bags(col, spec, where, managed)
            out += [torch.from_numpy(np.ascontiguousarray(ids)), torch.from_numpy(offsets)]
        return tuple(out)

    @torch.no_grad()
    def predict(self, batch: Any, where: str = "batch") -> np.ndarray:
        """Predictions ``[B, T]`` (float32, one column per task, named by ``outputs``) of the rows in ``batch``."""
        inputs = self.inputs(batch, where)
        if inputs[0].shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.module(*inputs).float().numpy()


def load(path: str | os.PathLike[str]) -> Predictor:
    """The artifact in directory ``path``, ready to ``predict``."""
    return Predictor(path)


RAW_SUFFIXES = (".csv", ".tsv", ".txt", ".gz")
"""Inputs read as raw text (CSV with a header, Criteo TSV), the way the model's data was converted."""


def parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    """A Parquet file, or a directory's Parquet files in name order (the training reader's order)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise ServingError(f"{path}: no Parquet files in this directory")
        return files
    if not path.is_file():
        raise ServingError(f"{path}: no such file or directory")
    return [path]


# ------------------------------------------------------------------------------------- raw text input
# ``features.json`` carries a ``raw`` section when the model was trained on data that ``recscale data
# convert`` wrote: the input format, the dense transform and fill, and how a categorical value became a
# table row (``hash``: 1 + SplitMix64(key) % (rows - 1); ``vocab``: the conversion's vocabulary, copied
# into ``vocab/``, unknown values on row 1; ``integer``: the value is the row; empty: row 0). A key is
# the value of a Criteo hex field, or the first 8 bytes (little-endian) of BLAKE2b of a CSV string.

_HEX_ID = re.compile(r"[0-9a-fA-F]{1,16}")
CRITEO_COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]


def _first_line(path: Path) -> str:
    import gzip

    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            return str(f.readline()).rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ServingError(f"{path}: cannot read the file ({err})") from None


def _layout(path: Path, raw: dict[str, Any], needed: list[str]) -> tuple[list[str], int, str]:
    """``(column names, header lines, delimiter)`` of a raw input file."""
    first = _first_line(path)
    if raw["format"] == "criteo_tsv":
        fields = first.count("\t") + 1
        if fields not in (39, 40):
            raise ServingError(
                f"{path}: line 1: expected 40 tab-separated Criteo fields (39 without a label), got {fields}"
            )
        return (CRITEO_COLUMNS if fields == 40 else CRITEO_COLUMNS[1:]), 0, "\t"
    delimiter = raw.get("delimiter", ",")
    header = first.split(delimiter)
    absent = [name for name in needed if name not in header]
    if absent:
        raise ServingError(f"{path}: column {absent[0]!r} is missing; the header has {', '.join(header)}")
    return header, 1, delimiter


def _numbers(
    array: Any, integers: bool, where: str, name: str, line: int, exact: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 values, missing mask)`` of a text column; a value that is not a number is an error.

    ``exact`` (with ``integers``): int64 values, every bit kept (raw 64-bit ids do not fit a float64).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    try:
        numbers = pc.cast(array, pa.int64() if integers else pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, text in enumerate(array.to_pylist()):
            try:
                _ = int(text) if integers and text is not None else float(text) if text is not None else 0
            except ValueError:
                kind = "an integer" if integers else "a number"
                raise ServingError(f"{where}: line {line + i}: column {name!r}: {text!r} is not {kind}") from None
        raise
    dtype = np.int64 if integers and exact else np.float64
    values = np.asarray(pc.fill_null(numbers, 0).to_numpy(zero_copy_only=False), dtype=dtype)
    return values, missing


def _keys(array: Any, fmt: str, mode: str, where: str, name: str, line: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 keys, missing mask)`` of a categorical text column (see the section comment)."""
    import hashlib

    import pyarrow.compute as pc

    missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    if mode == "integer":
        values, _ = _numbers(array, True, where, name, line, exact=True)
        return values.astype(np.uint64), missing
    encoded = pc.dictionary_encode(pc.fill_null(array, ""))
    distinct = encoded.dictionary.to_pylist()
    keys = np.zeros(len(distinct), dtype=np.uint64)
    for k, text in enumerate(distinct):
        if fmt == "criteo_tsv":
            if text and not _HEX_ID.fullmatch(text):
                row = int(np.nonzero(np.asarray(encoded.indices) == k)[0][0])
                raise ServingError(f"{where}: line {line + row}: column {name!r}: {text!r} is not a hexadecimal id")
            keys[k] = int(text, 16) if text else 0
        else:
            keys[k] = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return keys[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)], missing


def _rows(keys: np.ndarray, missing: np.ndarray, mode: str, rows: int, vocab: Any, where: str, name: str) -> np.ndarray:
    """The table rows the converter gave these keys (int64)."""
    if mode == "integer":
        out = keys.astype(np.int64)
        bad = missing | (out < 0) | (out >= rows)
        if bad.any():
            raise ServingError(f"{where}: column {name!r}: id missing or outside its table (rows 0..{rows - 1})")
        return out
    if mode == "hash":
        out = (_mix64(keys) % np.uint64(rows - 1)).astype(np.int64) + 1
    else:
        sorted_keys, key_rows = vocab
        at = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
        known = (sorted_keys[at] == keys) if len(sorted_keys) else np.zeros(len(keys), dtype=bool)
        out = np.where(known, key_rows[at] if len(sorted_keys) else 1, 1).astype(np.int64)
    return np.where(missing, 0, out)


def _remapped(keys: np.ndarray, missing: np.ndarray, rule: dict[str, Any], found: Any) -> np.ndarray:
    """Rows of a ``data.convert.fields`` rule: modulo, a hash feature, a GraphHash community map, or raw ids.

    ``raw`` gives the raw id ``key & (2**63 - 1)`` of a managed table (``Predictor`` maps it to its slot).
    ``found`` = (sorted keys, their rows, communities, cold rows); other keys go to the cold block, and an
    empty value is key 0.
    """
    keys = np.where(missing, np.uint64(0), keys)
    if rule["remap"] == "raw":
        return (keys & np.uint64(2**63 - 1)).astype(np.int64)
    if rule["remap"] in ("modulo", "hash"):
        mixed = keys if rule["remap"] == "modulo" else _mix64(keys)
        return (mixed % np.uint64(rule["rows"])).astype(np.int64)
    sorted_keys, key_rows, communities, cold = found
    out = communities + (_mix64(keys) % np.uint64(cold)).astype(np.int64)
    if len(sorted_keys):
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        out = np.where(sorted_keys[at] == keys, key_rows[at], out)
    return out


def raw_batches(path: Path, artifact: Path, features: dict[str, Any], block_mb: int = 16) -> Any:
    """Blocks of a raw input file as ``(columns, first line)``: dense float32 and sparse row ids, per name."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    raw = features.get("raw")
    if raw is None:
        raise ServingError(
            f"{path}: this model was not trained on data converted from CSV / Criteo TSV (features.json has no "
            "'raw' section), so there is no recipe for raw rows; score Parquet with the training columns"
        )
    dense, sparse = list(features["dense"]), [s["name"] for s in features["sparse"]]
    remap = raw.get("remap") or {}
    sources = {name: remap.get(name, {}).get("source", name) for name in sparse}
    columns_read = list(dict.fromkeys(sources.values()))
    names, header, delimiter = _layout(path, raw, dense + columns_read)
    vocabs: dict[str, Any] = {}
    for name in sparse:
        kind = remap.get(name, {}).get("remap")
        if kind == "graphhash":
            with np.load(artifact / "graphhash" / f"{name}.npz") as data:
                vocabs[name] = (data["keys"], data["rows"], *(int(v) for v in data["meta"]))
        elif raw["categorical"] == "vocab" and kind is None:
            with np.load(artifact / "vocab" / f"{name}.npz") as data:
                vocabs[name] = (data["keys"], data["rows"])
    stream: Any = pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=block_mb << 20, column_names=names, skip_rows=header),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if delimiter == "," else False,
                double_quote=delimiter == ",",
                escape_char=False,
                ignore_empty_lines=False,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=dense + columns_read,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )
        line = header + 1
        for block in reader:
            where = str(path)
            columns: dict[str, np.ndarray] = {}
            for name in dense:
                values, missing = _numbers(block.column(name), raw["format"] == "criteo_tsv", where, name, line)
                if raw["dense_transform"] == "log1p":
                    values = np.log1p(np.maximum(values, 0.0))
                columns[name] = np.where(missing, raw["dense_missing"], values).astype(np.float32)
            for name in sparse:
                column = sources[name]
                keys, missing = _keys(block.column(column), raw["format"], raw["categorical"], where, column, line)
                if name in remap:
                    columns[name] = _remapped(keys, missing, remap[name], vocabs.get(name))
                    continue
                rows = int(raw["table_rows"][name])
                columns[name] = _rows(keys, missing, raw["categorical"], rows, vocabs.get(name), where, name)
            yield columns, line
            line += block.num_rows
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        raise ServingError(f"{path}: cannot read it as {raw['format']} ({str(err).splitlines()[0]})") from None


def predict_file(
    artifact: str | os.PathLike[str] | Predictor,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    batch_size: int = 8192,
) -> int:
    """Score every row of ``data`` into ``out`` (Parquet, one ``p_<task>`` / ``pred_<task>`` column per task).

    ``data``: Parquet (a file or a directory), or a raw CSV / Criteo TSV file (``.gz`` too) read as the
    model's data was converted (``raw_batches``).

    Returns the number of rows scored. ``out`` is written under a temporary name and renamed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = artifact if isinstance(artifact, Predictor) else load(artifact)
    columns = list(model.features["dense"]) + [s["name"] for s in model.features["sparse"]]
    parts = []
    source = Path(data)
    if source.suffix.lower() in RAW_SUFFIXES:
        if not source.is_file():
            raise ServingError(f"{source}: no such file")
        for block, line in raw_batches(source, model.path, model.features):
            parts.append(model.predict(block, where=f"{source} (the block from line {line})"))
    for file in [] if source.suffix.lower() in RAW_SUFFIXES else parquet_files(source):
        try:
            reader = pq.ParquetFile(file)
        except (OSError, pa.ArrowException) as err:
            raise ServingError(f"{file}: not a readable Parquet file ({err})") from None
        missing = [c for c in columns if c not in reader.schema_arrow.names]
        if missing:
            raise ServingError(f"{file}: missing column {missing[0]!r}")
        for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
            parts.append(model.predict(batch, where=str(file)))
    probs = np.concatenate(parts) if parts else np.zeros((0, len(model.labels)), dtype=np.float32)
    table = pa.table({name: probs[:, t] for t, name in enumerate(model.outputs)})
    target = Path(out)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(target)
    return len(probs)


__all__ = [
    "ServingError",
    "Predictor",
    "load",
    "managed_slots",
    "map_ids",
    "parquet_files",
    "predict_file",
    "raw_batches",
]
