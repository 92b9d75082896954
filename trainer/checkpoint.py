"""The trainer's checkpoints: ``CheckpointManager`` and the RNG helpers (``recscale.sharding.checkpoint``)."""

from recscale.sharding.checkpoint import (
    CheckpointManager,
    checkpoint_run_dir,
    remove_partial,
    rng_state,
    set_rng_state,
)

__all__ = ["CheckpointManager", "checkpoint_run_dir", "remove_partial", "rng_state", "set_rng_state"]
