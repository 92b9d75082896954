"""Decoded rows -> ``Batch``: dense tensor, KeyedJaggedTensors, labels, weights, padding.

A batch is made of *pieces*, ``(columns, rows)``, where ``rows`` is a ``slice`` (unshuffled) or an
index array (a run of a window's permutation); a batch spans two windows when one ends inside it.
``pad`` zero-weight rows (no ids, zero dense values and labels) complete an uneven tail.

The all-single-hot case (Criteo) takes a fast path: one row gather of the ``[n, F]`` id matrix and a
transpose give the KJT values in key-major order.
"""

from __future__ import annotations

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs.schema import FeatureSchemaConfig
from recscale.data.batch import Batch
from recscale.data.decode import Columns, Sparse
from recscale.data.ragged import Ragged

Rows = slice | np.ndarray
Piece = tuple[Columns, Rows]


def _take(x: Sparse, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """``(values, lengths)`` of the rows ``rows`` of one sparse feature."""
    if isinstance(x, np.ndarray):
        values = x[rows]
        return values, np.ones(len(values), dtype=np.int64)
    part = x.slice(rows.start, rows.stop) if isinstance(rows, slice) else x.take(rows)
    return part.values, part.lengths


def _jagged(per_piece: list[tuple[np.ndarray, np.ndarray]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate one feature's pieces and add ``pad`` empty rows: ``(values, lengths)``."""
    values = np.concatenate([v for v, _ in per_piece]) if len(per_piece) > 1 else per_piece[0][0]
    lengths = [length for _, length in per_piece]
    if pad:
        lengths.append(np.zeros(pad, dtype=np.int64))
    return values, (np.concatenate(lengths) if len(lengths) > 1 else lengths[0])


def _kjt(keys: list[str], features: list[tuple[np.ndarray, np.ndarray]], stride: int) -> KeyedJaggedTensor:
    """A KJT from per-key ``(values, lengths)``; keys are laid out key-major."""
    values = np.concatenate([v for v, _ in features]) if features else np.empty(0, dtype=np.int64)
    lengths = np.concatenate([length for _, length in features]) if features else np.empty(0, dtype=np.int64)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)),
        lengths=torch.from_numpy(lengths.astype(np.int32)),
        stride=stride,
    )


def _stack(arrays: list[np.ndarray], pad: int, width: int, dtype: type = np.float32) -> torch.Tensor:
    """Concatenate row blocks ``[n_i, width]`` and ``pad`` zero rows into one ``[B, width]`` tensor."""
    if pad:
        arrays = [*arrays, np.zeros((pad, width), dtype=dtype)]
    out = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return torch.from_numpy(np.ascontiguousarray(out))


def _sparse_fast(pieces: list[Piece], pad: int, keys: list[str]) -> KeyedJaggedTensor:
    """Every feature single-hot in every piece: gather ``[B, F]`` rows, transpose to key-major ``[F, B]``."""
    blocks = [c.sparse_matrix[rows] for c, rows in pieces]  # type: ignore[index]
    real = sum(len(b) for b in blocks)
    ids = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    num_features = len(keys)
    if pad:
        lengths = np.zeros((num_features, real + pad), dtype=np.int32)
        lengths[:, :real] = 1
    else:
        lengths = np.ones((num_features, real), dtype=np.int32)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.ascontiguousarray(ids.T).reshape(-1)),
        lengths=torch.from_numpy(lengths.reshape(-1)),
        stride=real + pad,
    )


def assemble(pieces: list[Piece], pad: int, features: FeatureSchemaConfig) -> Batch:
    """One ``Batch`` of ``sum(len(rows)) + pad`` examples (shapes in ``recscale.data.batch``)."""
    first = pieces[0][0]
    label_blocks = [c.labels[r] for c, r in pieces]
    stride = sum(len(b) for b in label_blocks) + pad
    labels = _stack(label_blocks, pad, first.labels.shape[1])
    dense = _stack([c.dense[r] for c, r in pieces], pad, first.dense.shape[1])
    weights = np.zeros(stride, dtype=np.float32)
    at = 0
    for (c, r), block in zip(pieces, label_blocks):
        weights[at : at + len(block)] = 1.0 if c.valid is None else c.valid[r]
        at += len(block)

    keys = [s.name for s in features.sparse]
    if all(c.sparse_matrix is not None for c, _ in pieces):
        sparse = _sparse_fast(pieces, pad, keys)
    else:
        per_feature = [_jagged([_take(c.sparse[k], r) for c, r in pieces], pad) for k in range(len(keys))]
        sparse = _kjt(keys, per_feature, stride)

    sequences = timestamps = None
    if features.sequences:
        events = [q.name for q in features.sequences]
        seq = [_jagged([_take(c.sequences[k], r) for c, r in pieces], pad) for k in range(len(events))]
        sequences = _kjt(events, seq, stride)
        if any(q.timestamps for q in features.sequences):
            times = []
            for k in range(len(events)):
                if first.timestamps[k] is None:
                    values, lengths = seq[k]
                    times.append((np.zeros(len(values), dtype=np.int64), lengths))
                else:
                    pieces_k: list[tuple[np.ndarray, np.ndarray]] = []
                    for c, r in pieces:
                        ts = c.timestamps[k]
                        assert isinstance(ts, Ragged)
                        pieces_k.append(_take(ts, r))
                    times.append(_jagged(pieces_k, pad))
            timestamps = _kjt(events, times, stride)

    domain = None
    if first.domain is not None:
        domain = _stack([c.domain[r][:, None] for c, r in pieces], pad, 1, np.int64)[:, 0]  # type: ignore[index]
    window = None
    if first.window is not None:
        window = _stack([c.window[r][:, None] for c, r in pieces], pad, 1, np.int64)[:, 0]  # type: ignore[index]
    teacher = None
    if first.teacher is not None:  # padding rows: no teacher prediction
        teacher = _stack([c.teacher[r] for c, r in pieces], pad, first.teacher.shape[1])  # type: ignore[index]
        if pad:
            teacher[teacher.shape[0] - pad :] = float("nan")
    oracle = None
    if first.oracle is not None:
        oracle = _stack([c.oracle[r] for c, r in pieces], pad, first.oracle.shape[1])  # type: ignore[index]
    return Batch(
        dense=dense,
        sparse=sparse,
        labels=labels,
        weights=torch.from_numpy(weights),
        sequences=sequences,
        sequence_timestamps=timestamps,
        domain=domain,
        oracle=oracle,
        window=window,
        teacher=teacher,
    )
