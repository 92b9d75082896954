"""Zero the rows (and their optimizer state) of managed-table slots that an eviction handed to new ids.

A slot that changes owner would otherwise hand the evicted id's trained row, and its optimizer's
accumulated state, to an unrelated new id. ``RowReset`` zeroes both wherever this rank holds them:
the local shards of a table- / column- / row-wise table (TorchRec's state dicts are views of the fused
kernels' storage), the whole tensor of a data-parallel or unsharded table, and the data-parallel tables'
own optimizer state. Every rank runs it for the same slots (the slot maps are replicated).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _zero_rows(tensor: Any, slots: torch.Tensor) -> None:
    """Zero rows ``slots`` of a table-shaped tensor: its local shards when sharded (rows are dim 0)."""
    if hasattr(tensor, "local_shards"):
        for shard in tensor.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            mine = slots[(slots >= start) & (slots < start + count)] - start
            if mine.numel():
                shard.tensor[mine.to(shard.tensor.device)] = 0
    elif isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
        tensor[slots.to(tensor.device)] = 0


class RowReset:
    """Zeroes evicted slots' rows in the tables and their optimizers (a ``ManagedIds.on_evict`` callback).

    Args:
        sparse: the tables: TorchRec's ``DistributedModelParallel`` (with ``fused_optimizer``) or an
            unsharded ``SparseArch``.
        table_optimizer: the optimizer of data-parallel (or unsharded) tables, if any.
    """

    def __init__(self, sparse: nn.Module, table_optimizer: Any | None = None) -> None:
        self.sparse = sparse
        self.table_optimizer = table_optimizer

    def _weights(self, table: str) -> list[tuple[str, Any]]:
        suffix = f"embedding_bags.{table}.weight"
        return [(k, v) for k, v in self.sparse.state_dict().items() if k.endswith(suffix)]

    @torch.no_grad()
    def __call__(self, table: str, slots: torch.Tensor) -> None:
        """Zero rows ``slots`` ``[n]`` of ``table`` and of every optimizer state tensor shaped like its rows."""
        weights = self._weights(table)
        for _, weight in weights:
            _zero_rows(weight, slots)
        fused = getattr(self.sparse, "fused_optimizer", None)
        if fused is not None:
            state = fused.state_dict().get("state", {})
            for key, _ in weights:
                for value in state.get(key, {}).values():
                    _zero_rows(value, slots)
        if self.table_optimizer is not None:  # data-parallel tables: a KeyedOptimizer keyed like the state dict
            suffix = f"embedding_bags.{table}.weight"
            for key, param in self.table_optimizer.params.items():
                if key.endswith(suffix):
                    for value in self.table_optimizer.state.get(param, {}).values():
                        _zero_rows(value, slots)
