"""DCP planners for checkpoint trees: ``Chunks`` saved where they lie, nothing pickled, partial state dropped whole.

Save: each ``Chunks`` box becomes one shard of its global tensor; a plain tensor is one whole entry
(ranks offering the same entry write it once: DCP gives it to the rank with the least to write). An
entry whose boxes, over all ranks, do not cover its tensor (optimizer state that only some ranks
have) is left out with a warning, so a checkpoint never holds a tensor with holes.

Load: each target box reads the ranges of the saved boxes that overlap it, so any layout loads any
other. An entry saved as a pickled object is refused: loading one would run its code.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from recscale.sharding.checkpoint.chunks import Chunks
from recscale.sharding.checkpoint.tree import flatten

log = logging.getLogger("recscale")


def _write_item(
    fqn: str, offset: tuple[int, ...], tensor: torch.Tensor, size: tuple[int, ...], shard: bool
) -> WriteItem:
    offsets = torch.Size(offset)
    return WriteItem(
        index=MetadataIndex(fqn, offsets),
        type=WriteItemType.SHARD if shard else WriteItemType.TENSOR,
        tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=offsets, sizes=tensor.shape),
            properties=TensorProperties.create_from_tensor(tensor),
            size=torch.Size(size),
        ),
    )


class SavePlanner(DefaultSavePlanner):
    """DCP's default save planner over trees of tensors and ``Chunks`` (no other values)."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=True, flatten_sharded_tensors=False)
        self.dropped: list[str] = []
        """Entries left out because their boxes did not cover their tensor (set on the coordinator)."""

    def create_local_plan(self) -> SavePlan:
        """One write per box of each ``Chunks`` and per plain tensor."""
        items = []
        for fqn, value in self.state_dict.items():
            if isinstance(value, Chunks):
                items += [_write_item(fqn, o, t, value.size, True) for o, t in value.pieces if t.numel()]
            elif type(value) is torch.Tensor or isinstance(value, torch.nn.Parameter):
                items.append(_write_item(fqn, (0,) * value.dim(), value, tuple(value.shape), False))
            else:
                raise TypeError(
                    f"checkpoint entry {fqn}: a {type(value).__name__} is not a tensor (nothing is pickled)"
                )
        self.plan = SavePlan(items, planner_data=self.mappings)
        return self.plan

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        """DCP's global plan, without the sharded entries whose boxes leave holes."""
        boxes: dict[str, set[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        sizes: dict[str, int] = {}
        for plan in all_plans:
            for item in plan.items:
                if item.type == WriteItemType.SHARD and item.tensor_data is not None:
                    chunk = item.tensor_data.chunk
                    boxes.setdefault(item.index.fqn, set()).add((tuple(chunk.offsets), tuple(chunk.sizes)))
                    sizes[item.index.fqn] = item.tensor_data.size.numel()
        holes = {
            fqn for fqn, found in boxes.items() if sum(torch.Size(extent).numel() for _, extent in found) != sizes[fqn]
        }
        if holes:
            self.dropped = sorted(holes)
            shown = ", ".join(self.dropped[:6]) + (f" and {len(holes) - 6} more" if len(holes) > 6 else "")
            log.warning("not saved: %s (held by only some ranks, so the checkpoint would have holes)", shown)
            all_plans = [
                SavePlan([i for i in p.items if i.index.fqn not in holes], planner_data=p.planner_data)
                for p in all_plans
            ]
        return super().create_global_plan(all_plans)

    def lookup_object(self, index: MetadataIndex) -> Any:
        """The box of a ``Chunks`` that ``index`` names, or the plain tensor."""
        value = self.state_dict[index.fqn]
        if isinstance(value, Chunks):
            for offset, tensor in value.pieces:
                if torch.Size(offset) == index.offset:
                    return tensor
            raise KeyError(f"checkpoint entry {index.fqn}: no box at {index.offset}")
        return value


class LoadPlanner(DefaultLoadPlanner):
    """Reads each target (a tensor, or the boxes of a ``Chunks``) from whatever saved boxes overlap it."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False, allow_partial_load=False)

    def set_up_planner(
        self, state_dict: dict[str, Any], metadata: Metadata | None = None, is_coordinator: bool = False
    ) -> None:
        """Flatten the target tree by DCP's names (``Chunks`` stay as they are: targets are filled in place)."""
        self.original_state_dict = state_dict
        self.state_dict = flatten(state_dict)
        self.mappings = {}
        self.metadata = metadata
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> LoadPlan:
        """Reads for every target; a target the checkpoint lacks or holds as a pickled object is an error."""
        requests: list[ReadItem] = []
        for fqn, target in self.state_dict.items():
            saved = self.metadata.state_dict_metadata.get(fqn) if self.metadata is not None else None
            if saved is None:
                raise ValueError(f"the checkpoint has no entry {fqn}")
            if isinstance(saved, BytesStorageMetadata):
                raise ValueError(f"checkpoint entry {fqn} is a pickled object: refused (loading it would run its code)")
            if isinstance(target, Chunks):
                boxes = [(o, t) for o, t in target.pieces if t.numel()]
                size = target.size
            else:
                boxes, size = [((0,) * target.dim(), target)], tuple(target.shape)
            if tuple(saved.size) != tuple(size):
                raise ValueError(f"checkpoint entry {fqn} has shape {list(saved.size)}, expected {list(size)}")
            chunks = [ChunkStorageMetadata(offsets=torch.Size(o), sizes=t.shape) for o, t in boxes]
            requests += create_read_items_for_chunk_list(fqn, saved, chunks)
        return LoadPlan(requests)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        """The target box a read lands in (``index.index`` is its position among the target's boxes)."""
        target = self.state_dict[index.fqn]
        if isinstance(target, Chunks):
            boxes = [t for _, t in target.pieces if t.numel()]
            assert index.index is not None
            return boxes[index.index]
        assert isinstance(target, torch.Tensor)
        return target

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        """Never reached: ``create_local_plan`` refuses pickled entries."""
        raise ValueError(f"checkpoint entry {read_item.dest_index.fqn} is a pickled object: refused")


__all__ = ["LoadPlanner", "SavePlanner"]
