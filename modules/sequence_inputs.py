"""Event sequences: jagged embeddings (TorchRec ``EmbeddingCollection`` output) -> padded tensors + masks.

Layout decision (docs/models/kunlun.md §"Sequences from Parquet to the blocks"): sequences are
**right-aligned**. Position ``L - 1`` always holds the newest event, padding sits at the front, and
only the ``L = max_length`` newest events are kept. Recency is then a static slice (``s[:, -K:]``)
and the newest timestamp of every example is ``t[:, -1]``, with no gather by length.

Everything here is plain tensor arithmetic without Python control flow on tensor values or shapes,
so it traces with ``torch.fx`` (TorchRec's pipeline tracer) whether or not it is a leaf.

Legend: B batch, L max sequence length (config), N total ids in the jagged batch, D embedding dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor


@dataclass(frozen=True)
class SequenceLayout:
    """Event sequences the sparse arch emits, in config order."""

    names: tuple[str, ...]
    """Event types (the KJT keys of ``Batch.sequences``)."""
    max_lengths: tuple[int, ...]
    """Padded length L of each event type (its ``max_length``)."""
    dim: int
    """Embedding dim D (one for all sequence tables: a TorchRec ``EmbeddingCollection`` requirement)."""
    timestamps: tuple[bool, ...]
    """Whether each event type has a timestamp column."""

    def max_length(self, name: str) -> int:
        """Padded length of event type ``name``."""
        return self.max_lengths[self.names.index(name)]


def newest_padding_index(lengths_B: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each padded slot reads from in the jagged values, keeping the newest ``max_length`` events.

    Args:
        lengths_B: events per example (oldest first in the values).
        max_length: L.

    Returns:
        ``index_BL`` into the values (``-1`` for padding) and ``mask_BL`` (True where a real event is).

    Example::

        lengths [2, 0, 4], L = 3, values = [a0 a1 | | c0 c1 c2 c3]
        index   [[-1, 0, 1], [-1, -1, -1], [3, 4, 5]]   # c0 dropped: only the 3 newest are kept
    """
    ends_B = torch.cumsum(lengths_B, dim=0)
    kept_B = torch.clamp(lengths_B, max=max_length)
    slot_L = torch.arange(max_length, device=lengths_B.device)
    # slot j of example b holds event (end_b - L + j), the (L - j)-th newest
    index_BL = ends_B.unsqueeze(1) - max_length + slot_L.unsqueeze(0)
    mask_BL = slot_L.unsqueeze(0) >= (max_length - kept_B).unsqueeze(1)
    index_BL = torch.where(mask_BL, index_BL, torch.full_like(index_BL, -1))
    return index_BL, mask_BL


def gather_padded(values: torch.Tensor, index_BL: torch.Tensor, feature_dims: int = 1) -> torch.Tensor:
    """``values[index]`` with index ``-1`` reading zeros: ``[N, *rest] -> [B, L, *rest]``.

    A zero row is appended (``F.pad`` on dim 0; ``feature_dims`` = len(rest), static for tracing) so
    that padding is an ordinary differentiable gather, also when the batch holds no event (N = 0).
    """
    padded_values = F.pad(values, (0, 0) * feature_dims + (0, 1))
    return padded_values[index_BL]


def jagged_to_padded_newest(
    values: torch.Tensor, lengths_B: torch.Tensor, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned padding of a jagged batch: ``[N, *rest] -> ([B, L, *rest], mask [B, L])``."""
    index_BL, mask_BL = newest_padding_index(lengths_B, max_length)
    return gather_padded(values, index_BL, values.dim() - 1), mask_BL


class SequencePadder(nn.Module):
    """Jagged sequence embeddings and timestamps -> padded per-event tensors (no parameters).

    Inside a sharded ``SparseArch`` this module is a leaf of TorchRec's pipeline tracer (a sibling
    of the sharded tables); it is also fx-traceable itself.

    Args:
        layout: the event sequences (names, lengths, which ones have timestamps).
    """

    def __init__(self, layout: SequenceLayout) -> None:
        super().__init__()
        self.layout = layout

    def forward(
        self, embeddings: dict[str, JaggedTensor], timestamps: KeyedJaggedTensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pad every event type.

        Args:
            embeddings: ``EmbeddingCollection`` output, one JaggedTensor ``[N_e, D]`` per event type.
            timestamps: ``Batch.sequence_timestamps`` (same keys and lengths), or None when no
                sequence has timestamps.

        Returns:
            ``(sequences, masks, times)``: dicts by event type of ``[B, L, D]`` embeddings (zeros at
            padding), ``[B, L]`` bool masks and ``[B, L]`` int64 timestamps (0 where absent).
        """
        sequences: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        times: dict[str, torch.Tensor] = {}
        for name, max_length, has_time in zip(self.layout.names, self.layout.max_lengths, self.layout.timestamps):
            jt = embeddings[name]
            index_BL, mask_BL = newest_padding_index(jt.lengths(), max_length)
            sequences[name] = gather_padded(jt.values(), index_BL)
            masks[name] = mask_BL
            if has_time and timestamps is not None:
                times[name] = gather_padded(timestamps[name].values(), index_BL, feature_dims=0)
            else:
                times[name] = torch.zeros_like(index_BL)
        return sequences, masks, times
