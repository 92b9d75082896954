"""Staging for asynchronous saves: a copy of the state that training can no longer change.

``Stager`` copies the state into host buffers for an asynchronous save and keeps the buffers for the
next one (memory: one more copy of this rank's checkpoint state while ``checkpoint.async_save`` is on).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.staging import AsyncStager

from recscale.sharding.checkpoint.chunks import Chunks


class Stager(AsyncStager):
    """Copies a checkpoint tree into host buffers, reused from one save to the next.

    The copy is what lets training go on while the files are written. Buffers are pinned when the
    source is on a GPU (the copy then runs at PCIe speed and is synchronised once at the end).
    """

    _synchronize_after_execute = False

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def _copy(self, key: str, source: torch.Tensor, used: set[Any]) -> torch.Tensor:
        slot = (key, tuple(source.shape), source.dtype)
        used.add(slot)
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=source.is_cuda)
            self._buffers[slot] = buffer
        buffer.copy_(source.detach(), non_blocking=source.is_cuda)
        return buffer

    def _stage(self, tree: dict[str, Any], prefix: str, used: set[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            here = f"{prefix}.{key}"
            if isinstance(value, dict):
                out[key] = self._stage(value, here, used)
            elif isinstance(value, Chunks):
                out[key] = Chunks(value.size, [(o, self._copy(f"{here}@{o}", t, used)) for o, t in value.pieces])
            else:
                out[key] = self._copy(here, value, used)
        return out

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``state_dict`` that training can no longer change."""
        used: set[Any] = set()
        staged = self._stage(state_dict, "", used)
        for slot in set(self._buffers) - used:  # entries gone since the last save
            del self._buffers[slot]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return staged

    def synchronize_staging(self) -> None:
        """Nothing to wait for: ``stage`` returns once the copy is done."""
        return None

    def close(self) -> None:
        """Free the buffers."""
        self._buffers.clear()


__all__ = ["Stager"]
