"""The managed-collision tables' slot maps, read from a checkpoint and frozen into the artifact.

A ``collisions: managed`` table's rows are slots that training handed out to raw ids (TorchRec's
managed-collision hashing). The checkpoint keeps the remapper's state per rank (part ``managed``,
``rank<r>.json`` plus DCP tensors ``managed.rank<r>.<table>.*``); every rank's copy is the same, so
export reads rank 0's in one process, rebuilds the model's ``ManagedIds`` from it and writes, per
table, ``managed/<table>.npz``: the admitted ids sorted (``ids [n]`` int64), their slots
(``slots [n]`` int64), ``rows`` and ``input_hash_size``. ``serve.py`` then maps an id as evaluation
does: ``id mod input_hash_size`` (non-negative), its slot when admitted, else slot ``rows - 1``.
The map is frozen: serving admits and evicts nothing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from recscale.configs import JobConfig
from recscale.modules.managed_ids import ManagedIds, build_managed_ids
from recscale.sharding.checkpoint.manager import MANAGED_PART
from recscale.sharding.checkpoint.planner import LoadPlanner
from recscale.sharding.checkpoint.reader import SafeReader
from recscale.sharding.checkpoint.tree import join, tensor_targets

MANAGED_DIR = "managed"
"""Folder of the slot maps in the artifact (``managed/<table>.npz``)."""

SOURCE_RANK = "rank0"


def load_managed_state(managed: ManagedIds, checkpoint: Path) -> None:
    """Load rank 0's managed-collision state of ``checkpoint`` into ``managed`` (one process, no group).

    Raises:
        ValueError: the checkpoint has no managed-collision part (written by a run without such tables).
    """
    saved = checkpoint / MANAGED_PART / f"{SOURCE_RANK}.json"
    if not saved.is_file():
        raise ValueError(
            f"{checkpoint}: the checkpoint has no managed-collision state ({MANAGED_PART}/{SOURCE_RANK}.json), but "
            "embeddings.tables has collisions: managed tables"
        )
    values = json.loads(saved.read_text())
    # the ids collected since the last round only matter to a resumed run: not read
    targets = {k: {n: t for n, t in v.items() if n != "pending"} for k, v in tensor_targets(values).items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(
            {MANAGED_PART: {SOURCE_RANK: targets}},
            storage_reader=SafeReader(checkpoint),
            planner=LoadPlanner(),
            no_dist=True,
        )
    managed.eval()
    managed.load_state(join(targets, values))


def slot_maps(cfg: JobConfig, managed: ManagedIds) -> dict[str, dict[str, Any]]:
    """Per managed table: ``ids [n]`` (admitted, sorted), ``slots [n]``, ``rows``, ``input_hash_size``."""
    out: dict[str, dict[str, Any]] = {}
    for table in cfg.embeddings.tables:
        if table.collisions != "managed":
            continue
        ids, slots = managed.slot_map(table.name)
        out[table.name] = {
            "ids": ids.cpu().numpy().astype(np.int64),
            "slots": slots.cpu().numpy().astype(np.int64),
            "rows": int(table.num_embeddings),
            "input_hash_size": int(table.managed.input_hash_size),
        }
    return out


def checkpoint_slot_maps(cfg: JobConfig, checkpoint: Path) -> dict[str, dict[str, Any]]:
    """The slot maps (``slot_maps``) of ``cfg``'s managed tables in ``checkpoint``; empty without such tables."""
    managed = build_managed_ids(cfg.embeddings, cfg.data.features, torch.device("cpu"))
    if managed is None:
        return {}
    load_managed_state(managed, checkpoint)
    return slot_maps(cfg, managed)


def write_slot_maps(maps: dict[str, dict[str, Any]], artifact: Path) -> dict[str, dict[str, Any]]:
    """Write ``managed/<table>.npz`` per table into ``artifact``; returns ``features.json``'s ``managed`` section."""
    if not maps:
        return {}
    (artifact / MANAGED_DIR).mkdir()
    section = {}
    for table, found in maps.items():
        file = f"{MANAGED_DIR}/{table}.npz"
        np.savez(
            artifact / file,
            ids=found["ids"],
            slots=found["slots"],
            rows=np.int64(found["rows"]),
            input_hash_size=np.int64(found["input_hash_size"]),
        )
        section[table] = {
            "file": file,
            "rows": found["rows"],
            "input_hash_size": found["input_hash_size"],
            "admitted": len(found["ids"]),
        }
    return section


__all__ = ["MANAGED_DIR", "checkpoint_slot_maps", "load_managed_state", "slot_maps", "write_slot_maps"]
