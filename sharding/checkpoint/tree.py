"""State trees: nested dicts whose leaves are tensors, ``Chunks`` or JSON values.

A part of a checkpoint hands its state as one tree. The tensors go to DCP's files, the JSON values to
JSON files; ``split`` separates them and ``join`` puts a loaded tree back together. Nothing is
pickled: a value that is neither is an error naming its place in the tree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from recscale.sharding.checkpoint.chunks import Chunks

TENSOR = "__tensor__"
"""Key of the JSON stand-in for a tensor leaf (``{"__tensor__": dtype, "shape": [...]}``), when asked for."""

JSON_SCALARS = (bool, int, float, str, type(None))


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON (numpy scalars become Python numbers); TypeError if it cannot be."""
    if isinstance(value, JSON_SCALARS):
        return value
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {_key(k, where): _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"checkpoint state {where}: a {type(value).__name__} is neither a tensor nor JSON (nothing is pickled)"
    )


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key or key == TENSOR:
        raise TypeError(f"checkpoint state {where}: key {key!r} is not a usable name")
    return key


def split(tree: dict[str, Any], where: str, mark_tensors: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor tree, JSON tree) of ``tree``; empty branches are left out of each.

    With ``mark_tensors`` the JSON tree holds a stand-in for each plain tensor (its dtype and shape), so a
    loader can make the tensors to read into from the JSON alone (``tensor_targets``).
    """
    tensors: dict[str, Any] = {}
    json: dict[str, Any] = {}
    for key, value in tree.items():
        here = f"{where}.{_key(key, where)}"
        if isinstance(value, dict):
            sub_tensors, sub_json = split(value, here, mark_tensors)
            if sub_tensors:
                tensors[key] = sub_tensors
            if sub_json:
                json[key] = sub_json
        elif isinstance(value, Chunks):
            tensors[key] = value
        elif isinstance(value, torch.Tensor):
            tensors[key] = value
            if mark_tensors:
                json[key] = {TENSOR: str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
        else:
            json[key] = _json_value(value, here)
    return tensors, json


def tensor_targets(json: dict[str, Any]) -> dict[str, Any]:
    """Empty tensors to load into, one per stand-in of a ``split(..., mark_tensors=True)`` JSON tree."""
    out: dict[str, Any] = {}
    for key, value in json.items():
        if isinstance(value, dict) and TENSOR in value:
            dtype = getattr(torch, str(value[TENSOR]), None)
            if not isinstance(dtype, torch.dtype) or math.prod(value["shape"]) > 1 << 24:
                raise ValueError(f"checkpoint state {key}: a bad tensor entry {value}")
            out[key] = torch.empty(tuple(value["shape"]), dtype=dtype)
        elif isinstance(value, dict):
            sub = tensor_targets(value)
            if sub:
                out[key] = sub
    return out


def join(tensors: dict[str, Any], json: dict[str, Any]) -> dict[str, Any]:
    """The tree ``split`` took apart (tensor leaves replace their stand-ins)."""
    out: dict[str, Any] = dict(json)
    for key, value in tensors.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and TENSOR not in out[key]:
            out[key] = join(value, out[key])
        else:
            out[key] = value
    return out


def merge(trees: list[dict[str, Any]]) -> dict[str, Any]:
    """One JSON tree from several ranks' trees: mappings are united; for any other value the first rank's wins."""
    out: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge([out[key], value])
            elif key not in out:
                out[key] = value
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of a nested dict by DCP's names for them (``a.b.c``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def flat_keys(tree: dict[str, Any], prefix: str) -> list[str]:
    """DCP's names of the leaves of a nested dict (``a.b.c``)."""
    return list(flatten(tree, prefix))


__all__ = ["TENSOR", "flat_keys", "flatten", "join", "merge", "split", "tensor_targets"]
