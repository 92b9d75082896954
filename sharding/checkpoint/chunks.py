"""``Chunks``: the pieces of one large tensor that this rank holds, each at its offset.

A checkpoint entry is either a whole tensor (replicated: every rank that has it offers the same one,
and one of them writes it) or a ``Chunks``: a global tensor of which this rank holds some boxes.
Examples: a row-wise shard of an embedding table (``[rows, dim]`` at ``(first_row, 0)``), or a ZeRO
partition's fragment of a dense parameter, flattened to 1-D (``[n]`` at ``(start,)``). DCP saves each
box where it lies and loads any range of the global tensor from the boxes that overlap it, so a
checkpoint written at one layout loads at any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor


@dataclass
class Chunks:
    """This rank's boxes of one global tensor.

    Boxes must not overlap, on this rank or across ranks, except that ranks holding the same
    replicated box offer it under the same offset (then one of them writes it).
    """

    size: tuple[int, ...]
    """Shape of the global tensor."""
    pieces: list[tuple[tuple[int, ...], torch.Tensor]] = field(default_factory=list)
    """(offset of the box in the global tensor, the box's values); the tensor's shape is the box's extent."""

    def add(self, offset: tuple[int, ...], tensor: torch.Tensor) -> None:
        """Add a box (checked against the global shape)."""
        if len(offset) != len(self.size) or tensor.dim() != len(self.size):
            raise ValueError(f"a box of rank {tensor.dim()} at {offset} in a tensor of shape {list(self.size)}")
        if any(o < 0 or o + n > s for o, n, s in zip(offset, tensor.shape, self.size)):
            raise ValueError(f"box {list(tensor.shape)} at {list(offset)} is outside the tensor {list(self.size)}")
        self.pieces.append((tuple(offset), tensor))

    @staticmethod
    def flat(numel: int, start: int, tensor: torch.Tensor) -> Chunks:
        """A 1-D global tensor of ``numel`` elements of which this rank holds ``tensor`` (any shape) at ``start``."""
        out = Chunks((numel,))
        out.add((start,), tensor.reshape(-1))
        return out

    @property
    def numel(self) -> int:
        """Elements of the global tensor."""
        return math.prod(self.size)


def as_checkpoint_value(value: Any) -> Any:
    """A state-dict value in the form checkpoints take: ``Chunks`` for a sharded tensor, else unchanged.

    TorchRec hands out ``ShardedTensor`` (and, if asked, ``DTensor``) for sharded tables and their
    optimizer state; only their local shards and global shape are read here (public attributes).
    """
    if isinstance(value, ShardedTensor):
        out = Chunks(tuple(value.metadata().size))
        for shard in value.local_shards():
            out.add(tuple(shard.metadata.shard_offsets), shard.tensor)
        return out
    if isinstance(value, DTensor):
        chunks = value.__create_chunk_list__()
        local = value.to_local()
        if len(chunks) != 1 or tuple(chunks[0].sizes) != tuple(local.shape):
            raise TypeError(f"a DTensor with {len(chunks)} local chunks is not supported in checkpoints")
        out = Chunks(tuple(value.shape))
        if local.numel():
            out.add(tuple(chunks[0].offsets), local)
        return out
    return value


__all__ = ["Chunks", "as_checkpoint_value"]
