"""The batch every recscale model trains on: dense tensor + KeyedJaggedTensor(s) + labels.

Shapes (B = examples in the batch on this rank, T = tasks, F = sparse features):
    dense        [B, num_dense]   float32
    sparse       KJT, keys = sparse feature names, lengths [F * B] (key-major), int64 ids
    labels       [B, T]           float32 in {0, 1}
    weights      [B]              float32; 1 for real examples, 0 for padding of an uneven tail
    sequences    KJT or None, keys = event-type names, values = item ids (oldest first)
    sequence_timestamps  KJT or None, same keys and lengths as ``sequences``, int64 seconds
    domain       [B] int64 or None
    window       [B] int64 or None: the Zipper attribution window of each row
    teacher      [B, T] float32 or None: a teacher's logits, NaN where it had no prediction
    oracle       [B, T] float32 or None: true probability (synthetic data), for the oracle AUC

It implements TorchRec's ``Pipelineable`` so ``TrainPipelineSparseDist`` can move it between
devices and streams.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One batch of examples on one rank (see the module docstring for shapes)."""

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    sequences: KeyedJaggedTensor | None = None
    sequence_timestamps: KeyedJaggedTensor | None = None
    domain: torch.Tensor | None = None
    oracle: torch.Tensor | None = None
    window: torch.Tensor | None = None
    teacher: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Examples in this batch (padding included)."""
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """A copy of the batch on ``device``."""
        moved = {
            f.name: (v.to(device=device, non_blocking=non_blocking) if v is not None else None)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return replace(self, **moved)

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used on ``stream`` (CUDA pipelining)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value.record_stream(stream)

    def pin_memory(self) -> Batch:
        """A copy in pinned host memory (faster host-to-device copies)."""
        pinned = {
            f.name: (v.pin_memory() if v is not None else None) for f in fields(self) for v in [getattr(self, f.name)]
        }
        return replace(self, **pinned)

    def rows(self, start: int, stop: int) -> Batch:
        """The examples ``[start, stop)`` as a batch of their own (every field, KJTs included).

        A rank's share of a batch that every rank read whole (``recscale features select`` on N ranks).
        """
        moved = {
            f.name: (_kjt_rows(v, start, stop) if isinstance(v, KeyedJaggedTensor) else v[start:stop])
            for f in fields(self)
            for v in [getattr(self, f.name)]
            if v is not None
        }
        return replace(self, **moved)


def _kjt_rows(kjt: KeyedJaggedTensor, start: int, stop: int) -> KeyedJaggedTensor:
    """Rows ``[start, stop)`` of a key-major KJT of stride B (``lengths [F * B]`` -> ``[F * (stop - start)]``)."""
    b = kjt.stride()
    lengths, offsets = kjt.lengths(), kjt.offsets()
    spans = [(int(offsets[k * b + start]), int(offsets[k * b + stop])) for k in range(len(kjt.keys()))]
    values = torch.cat([kjt.values()[lo:hi] for lo, hi in spans]) if spans else kjt.values()[:0]
    weights = kjt.weights_or_none()
    if weights is not None:
        weights = torch.cat([weights[lo:hi] for lo, hi in spans]) if spans else weights[:0]
    kept = lengths.view(-1, b)[:, start:stop].reshape(-1) if spans else lengths[:0]
    return KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=kept, weights=weights, stride=stop - start)
