"""Checkpoints: one format, one writer, every rank writing its own shards in parallel.

- ``parts``: ``save_parts`` / ``load_parts``, the one writer and reader of a checkpoint directory;
- ``manager``: ``CheckpointManager`` (save, asynchronous save, verify, find the newest intact one,
  load at any world size and layout; the ``best`` pointer);
- ``protocol``: ``Checkpointable``, the protocol of every part (tables, dense backend, trainer state);
- ``sparse`` / ``dense`` / ``trainer_state``: the parts; ``experts``: where expert-parallel parameters
  sit in the reference model; ``param_access``: a backend's view of its parameters and optimizer state;
- ``chunks`` / ``tree`` / ``planner`` / ``storage``: the DCP machinery (sharded boxes, trees of tensors
  and JSON, planners, hashing writer, safe reader, staging);
- ``export``: a checkpoint's dense weights, whole, in one process.
"""

from recscale.sharding.checkpoint.chunks import Chunks
from recscale.sharding.checkpoint.dense import DenseLayout, DenseState
from recscale.sharding.checkpoint.experts import ExpertSharded, ExpertSlot, Placement, expert_slots, placements
from recscale.sharding.checkpoint.manager import CheckpointManager, checkpoint_run_dir, remove_partial, verify
from recscale.sharding.checkpoint.param_access import Held, ParamAccess, TorchParamAccess
from recscale.sharding.checkpoint.parts import load_parts, read_manifest, save_parts
from recscale.sharding.checkpoint.protocol import Checkpointable, Saved
from recscale.sharding.checkpoint.trainer_state import TrainerState, rng_state, set_rng_state

__all__ = [
    "CheckpointManager",
    "Checkpointable",
    "Chunks",
    "DenseLayout",
    "DenseState",
    "ExpertSharded",
    "ExpertSlot",
    "Held",
    "ParamAccess",
    "Placement",
    "Saved",
    "TorchParamAccess",
    "TrainerState",
    "checkpoint_run_dir",
    "expert_slots",
    "load_parts",
    "placements",
    "read_manifest",
    "remove_partial",
    "rng_state",
    "save_parts",
    "set_rng_state",
    "verify",
]
