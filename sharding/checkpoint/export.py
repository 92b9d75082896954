"""Read a checkpoint's dense weights whole, in one process, whatever layout wrote them.

The dense part of every checkpoint is stored in the single-device reference layout (flattened), so
``dense_weights`` returns the reference model's state dict: the same for a DDP, a ZeRO 1/2 or an
expert-parallel writer. It replaces what DeepSpeed's own ``zero_to_fp32.py`` gave (consolidated
fp32 weights) for checkpoints that keep no DeepSpeed files.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from recscale.sharding.checkpoint.manager import read_manifest
from recscale.sharding.checkpoint.planner import LoadPlanner
from recscale.sharding.checkpoint.reader import SafeReader, read_metadata


def dense_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every dense weight and buffer of the checkpoint at ``path``, by its name in the reference model.

    Raises:
        ValueError: not a checkpoint of this format.
    """
    path = Path(path)
    shapes = {k: tuple(v) for k, v in read_manifest(path)["parts"]["dense"]["shapes"].items()}
    entries = read_metadata(path).state_dict_metadata
    targets = {}
    for name, shape in shapes.items():
        saved = entries[f"dense.model.{name}"]
        targets[name] = torch.empty(math.prod(shape), dtype=saved.properties.dtype)  # type: ignore[union-attr]
    dcp.load({"dense": {"model": targets}}, storage_reader=SafeReader(path), planner=LoadPlanner(), no_dist=True)
    return {name: t.view(shapes[name]) for name, t in targets.items()}


__all__ = ["dense_weights"]
