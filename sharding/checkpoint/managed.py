"""The managed-collision tables' part of a checkpoint: their slot maps and the ids of the current round.

The remapper is replicated (every rank holds the same state), so the part is saved per rank like the
trainer's: a run on more ranks than wrote the checkpoint gives the new ranks rank 0's state, and a
resumed run makes the same admissions and evictions as an uninterrupted one. Without it the tables'
rows would be meaningless: it is loaded with the weights, also when only weights are (fine-tuning).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from recscale.sharding.checkpoint.protocol import Saved
from recscale.sharding.checkpoint.tree import TENSOR


def _targets(json: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in json.items():
        if isinstance(value, dict) and TENSOR in value:
            dtype = getattr(torch, str(value[TENSOR]), None)
            if dtype is not torch.int64:
                raise ValueError(f"{where}: managed-collision state {key} is not an int64 tensor: {value}")
            out[key] = torch.empty(tuple(value["shape"]), dtype=dtype)
        elif isinstance(value, dict):
            out[key] = _targets(value, where)
    return out


class ManagedIdsState:
    """The remapper's state (``Checkpointable``, saved per rank).

    Args:
        managed: the job's ``ManagedIds``.
    """

    per_rank: ClassVar[bool] = True

    def __init__(self, managed: Any) -> None:
        self.managed = managed

    def state_dict(self) -> dict[str, Any]:
        """Per table its slot map, policy statistics and collected ids; the steps collected (host tensors)."""
        return {
            k: ({n: t.cpu() for n, t in v.items()} if isinstance(v, dict) else v)
            for k, v in self.managed.state().items()
        }

    def load_targets(self, saved: Saved) -> dict[str, Any]:
        """Empty int64 tensors shaped like the saved ones."""
        missing = [t for t in self.managed.mch if t not in saved.json]
        if missing:
            raise ValueError(
                f"{saved.path}: the checkpoint has no managed-collision state for table(s) {', '.join(missing)} "
                "(embeddings.tables[].collisions: managed); it was written by a run without them"
            )
        return _targets(saved.json, str(saved.path))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the remapper from the loaded state."""
        self.managed.load_state(state)
