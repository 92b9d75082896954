"""Which submodules of each dense arch make up a profiled "module", and which FLOPs keys they spend.

The per-module time + MFU table (``trainer/profiling.py``) needs two things per row: the modules
whose forward calls are timed, and the keys of the arch's ``flops()`` breakdown that those modules
compute. Both are written out here, per arch class, as glob patterns (``fnmatch``) over
``named_modules()`` paths and over breakdown keys, so the mapping is explicit and testable
(``tests/trainer/test_profiling.py`` checks that every breakdown key of every preset is claimed by
exactly one row and every module pattern matches something).

FLOPs computed between the listed modules (e.g. the FM products of a Wukong FMB are inside the
``fmb`` module; the attention of GCA's pooling is not inside ``pool_q`` / ``pool_kv``) land where the
listed module boundary puts them: a row whose module does not contain all of its FLOPs says so in
``note``. An arch without an entry gets one row per called top-level child and no FLOPs per row.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModuleGroup:
    """One row of the per-module table."""

    name: str
    """Row label."""
    modules: tuple[str, ...]
    """``fnmatch`` patterns over ``named_modules()`` paths of the arch: the modules whose calls are timed."""
    flops: tuple[str, ...]
    """``fnmatch`` patterns over the keys of the arch's ``flops()`` breakdown."""
    note: str = ""
    """What the row's time does or does not cover."""


_G = ModuleGroup

GROUPS: dict[str, tuple[ModuleGroup, ...]] = {
    "DCNv2Dense": (
        _G("bottom", ("bottom",), ("bottom",)),
        _G("cross", ("cross.*",), ("cross",)),
        _G("deep", ("deep",), ("deep",)),
        _G("head", ("head",), ("head",)),
    ),
    "DLRMDense": (
        _G("bottom", ("bottom",), ("bottom",)),
        _G("interaction", ("interaction",), ("interaction",)),
        _G("top", ("top",), ("top",)),
        _G("head", ("head",), ("head",)),
    ),
    "WukongDense": (
        _G("embedding", ("embedding",), ("embedding",)),
        _G("fmb", ("layers.*.fmb",), ("fm", "fmb_mlp", "attentive")),
        _G("lcb", ("layers.*.lcb",), ("lcb",)),
        _G("residual", ("layers.*.residual",), ("residual",)),
        _G("top", ("top",), ("top",)),
        _G("head", ("head",), ("head",)),
    ),
    "KunlunDense": (
        _G("tokens", ("tokens",), ("tokens/*",)),
        _G("in_proj", ("stacks.*.in_proj",), ("*/in_proj",)),
        _G("xsum", ("xsum.*",), ("layer*/xsum",)),
        _G("gdpa", ("stacks.*.gdpa.*",), ("layer*/*/gdpa",)),
        _G("swa", ("stacks.*.swa.*",), ("layer*/*/swa",)),
        _G("hsp", ("stacks.*.hsp.*",), ("layer*/*/hsp",)),
        _G("mowe", ("interaction.*",), ("layer*/mowe",)),
        _G("top", ("top",), ("top",)),
        _G("head", ("head",), ("head",)),
    ),
    "LatticeDense": (
        _G("processors", ("processors",), ("lattice/processors",)),
        _G("seq_proj", ("seq_proj.*",), ("lattice/seq_proj",)),
        _G("tb", ("tb.*.*",), ("lattice/tb",)),
        _G("compress", ("compress.*.*",), ("lattice/compress",)),
        _G("dwfb", ("dwfb.*",), ("lattice/dwfb",)),
        _G("ecs", ("ecs.maps.*",), ("lattice/ecs",)),
        _G("heads", ("heads.*",), ("lattice/heads",)),
    ),
    "GCASequenceDense": (
        _G("in_proj", ("in_proj.*",), ("*/in_proj",)),
        _G("encoders", ("encoders.*.*",), ("domain_*/layer*",)),
        _G("gca", ("gca.*",), ("gca/*",)),
        _G(
            "pool",
            ("pool_q.*", "pool_kv.*"),
            ("*/pool",),
            note="the pooling attention's products run between pool_q/pool_kv calls and are not in this row's time",
        ),
        _G("context", ("dense_mlp", "context"), ("context/*",)),
        _G("top", ("top",), ("top",)),
        _G("head", ("head",), ("head",)),
    ),
    "MultiTaskDense": (
        _G("bottom", ("bottom",), ("bottom/*",), note="the shared bottom (its arch's parts, less its head)"),
        _G("experts", ("layer",), ("mmoe/*", "ple/*"), note="MMoE / PLE experts, gates and mixtures"),
        _G("towers", ("towers.*", "heads.*"), ("towers",)),
    ),
}
"""Rows per arch class. ``MoEDense`` (HiLoMoE) wraps another arch as ``inner``: its rows are the inner
arch's, with the HiLoMoE blocks inside the MLP rows that hold them (their FLOPs are in those keys)."""


@dataclass(frozen=True)
class ResolvedGroup:
    """A row bound to a model: its modules (by path) and its breakdown keys."""

    group: ModuleGroup
    paths: tuple[str, ...]
    keys: tuple[str, ...]


def _unwrap(dense: nn.Module) -> tuple[nn.Module, str]:
    """``MoEDense(inner)`` / ``SharedWindowHeads(inner)`` -> (inner, ``"inner."``); other arches -> (arch, "")."""
    if type(dense).__name__ in ("MoEDense", "SharedWindowHeads") and hasattr(dense, "inner"):
        inner, prefix = _unwrap(dense.inner)
        return inner, "inner." + prefix
    return dense, ""


def resolve_groups(dense: nn.Module, flops_keys: list[str]) -> tuple[list[ResolvedGroup], list[str]]:
    """Bind ``dense``'s rows to its modules and to ``flops_keys``.

    Returns:
        The rows (in table order) and the breakdown keys that no row claims.
    """
    arch, prefix = _unwrap(dense)
    groups = GROUPS.get(type(arch).__name__)
    paths = [name for name, _ in arch.named_modules() if name]
    if groups is None:
        groups = tuple(
            ModuleGroup(name, (name,), (), note="no FLOPs mapping for this arch")
            for name, child in arch.named_children()
            if not isinstance(child, nn.ModuleList | nn.ModuleDict)
        )
    rows, claimed = [], set()
    for g in groups:
        matched = tuple(prefix + p for p in paths if any(fnmatch.fnmatchcase(p, pat) for pat in g.modules))
        keys = tuple(k for k in flops_keys if any(fnmatch.fnmatchcase(k, pat) for pat in g.flops))
        claimed.update(keys)
        if matched:
            rows.append(ResolvedGroup(g, _outermost(matched), keys))
    return rows, [k for k in flops_keys if k not in claimed]


def _outermost(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Drop paths nested inside another matched path (their time is already in the outer one)."""
    return tuple(p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths))
