"""The one protocol every part of a checkpoint follows (tables, dense part, trainer state).

A part is DCP's ``Stateful`` (``state_dict`` / ``load_state_dict``) with one more step in between,
``load_targets``: given what the checkpoint holds (``Saved``), the part says which tensors to read
into. That is where a part reshards (a ZeRO rank asks for its fragment's range, a DDP rank for the
whole tensor), checks shapes, and decides what starts fresh. Trees are nested dicts whose leaves are
tensors, ``Chunks`` or JSON values (``recscale.sharding.checkpoint.tree``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch.distributed.checkpoint.metadata import STORAGE_TYPES, TensorStorageMetadata


@dataclass
class Saved:
    """What a checkpoint holds for one part."""

    path: Path
    """The checkpoint directory (for messages)."""
    prefix: str
    """The part's place in the checkpoint's entry names (``dense``, ``trainer.rank0``)."""
    entries: dict[str, STORAGE_TYPES]
    """Every tensor entry of the checkpoint (DCP's metadata), by full name."""
    json: dict[str, Any]
    """The part's JSON values."""
    world_size: int
    """Ranks of the run that wrote it."""
    group: Any
    """Process group of the checkpoint's collectives (None: the default group)."""

    def entry(self, key: str) -> TensorStorageMetadata | None:
        """The saved tensor ``<prefix>.<key>``, if there is one."""
        found = self.entries.get(f"{self.prefix}.{key}")
        return found if isinstance(found, TensorStorageMetadata) else None

    def children(self, key: str) -> set[str]:
        """Names ``n`` of the saved tensors ``<prefix>.<key>.<n>`` (``n`` without dots)."""
        head = f"{self.prefix}.{key}."
        return {k[len(head) :] for k in self.entries if k.startswith(head) and "." not in k[len(head) :]}


class Checkpointable(Protocol):
    """One part of a checkpoint."""

    per_rank: ClassVar[bool]
    """True: every rank saves its own state (the trainer's); False: the ranks' states form one whole."""

    def state_dict(self) -> dict[str, Any]:
        """What to save: tensors (views are fine), ``Chunks`` of this rank's boxes, JSON values."""

    def load_targets(self, saved: Saved) -> dict[str, Any]:
        """Tensors and ``Chunks`` to read the saved entries into (a tree shaped like ``state_dict``'s)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the loaded tree: the targets, filled, joined with the saved JSON values."""


__all__ = ["Checkpointable", "Saved"]
