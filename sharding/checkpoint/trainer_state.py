"""The trainer's part of a checkpoint: each rank's own state, as JSON and tensors (nothing pickled).

Each rank saves its data position, RNG states, plateau and stage state; JSON values go to
``trainer/rank<r>.json`` (with a stand-in for each tensor), tensors (the RNG states) to DCP under
``trainer.rank<r>``. A run on more ranks than wrote the checkpoint gives the new ranks rank 0's state.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import numpy as np
import torch

from recscale.sharding.checkpoint.protocol import Saved
from recscale.sharding.checkpoint.tree import tensor_targets


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, top-k noise, shuffles), as JSON and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = {str(i): s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = np.asarray(n["keys"].numpy(), dtype=np.uint32)
    np.random.set_state((n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state["cuda"][str(i)] for i in range(len(state["cuda"]))])


class TrainerState:
    """One rank's trainer state (``Checkpointable``, saved per rank).

    Args:
        state: what to save (nested dicts of JSON values and tensors); empty when loading.
    """

    per_rank: ClassVar[bool] = True

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = state or {}

    def state_dict(self) -> dict[str, Any]:
        """The state as given."""
        return self.state

    def load_targets(self, saved: Saved) -> dict[str, Any]:
        """Empty tensors for the tensor stand-ins of the saved JSON."""
        return tensor_targets(saved.json)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the loaded state."""
        self.state = state


__all__ = ["TrainerState", "rng_state", "set_rng_state"]
