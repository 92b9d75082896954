"""Layout-free dense checkpoints: the dense state as the reference model holds it, in DCP.

Every dense backend writes, under its ``dense/`` directory, one ``torch.distributed.checkpoint`` of

    model.<name>               every weight in fp32 (DeepSpeed's master copy when it keeps one), in the
                               **reference layout**: a HiLoMoE block's experts as the full stacks
                               ``experts_v [L, K, I]`` / ``experts_u [L, K, O]`` of ``HiLoMoELinear``
    optim.state.<name>.<key>   each parameter's optimizer state in the same layout (Adam's moments,
                               Adagrad's sums, momentum buffers: all elementwise) and its ``step``
    scheduler                  the learning-rate schedule's state (its step)

and ``layout.json`` (who wrote it: backend, world size, ``ep_size``, ZeRO stage, dispatch). A run whose
layout is the writer's reads the backend's own files (bit-exact resume); any other run (another world
size, ``ep_size``, ZeRO stage or backend) reads this form and cuts it to its own layout, optimizer
state included. ``DDPDense`` holds the reference layout already: its DCP checkpoint *is* this form.

Expert stacks are assembled by summing, over the EP group, a zero stack in which each rank filled its
own experts (every expert has exactly one owner there): HiLoMoE experts are rank-1, L·K·(I + O)
numbers per block, so the full stacks are small (docs/models/hilomoe.md, "Expert parallelism").

Tensor legend: L MoE layers, K experts per layer, I input width, O output width.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from recscale.modules.hilomoe.convert import moe_blocks

log = logging.getLogger("recscale")

LAYOUT_FILE = "layout.json"


@dataclass(frozen=True)
class DenseLayout:
    """How a dense checkpoint's writer held its parameters."""

    backend: str
    """``ddp`` (reference layout, replicated) or ``deepspeed``."""
    world_size: int
    ep_size: int = 1
    zero_stage: int = 0
    dispatch: str = ""
    """HiLoMoE dispatch under DeepSpeed (``one_round`` / ``per_layer``); empty without MoE blocks."""

    def save(self, directory: Path) -> None:
        """Write ``layout.json`` (rank 0 only)."""
        if not dist.is_initialized() or dist.get_rank() == 0:
            (Path(directory) / LAYOUT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def read(directory: Path) -> DenseLayout | None:
        """The layout a checkpoint was written with; None for checkpoints older than this file."""
        path = Path(directory) / LAYOUT_FILE
        if not path.is_file():
            return None
        return DenseLayout(**json.loads(path.read_text()))


def has_reference_state(directory: Path) -> bool:
    """Whether ``directory`` holds a DCP checkpoint (the layout-free form)."""
    return (Path(directory) / ".metadata").is_file()


@dataclass(frozen=True)
class ExpertSlot:
    """Where one expert parameter of an expert-parallel block sits in the reference stacks."""

    stack: str
    """Local name of the reference stack inside the block: ``experts_v`` or ``experts_u``."""
    layer: int
    """l, the MoE layer."""
    expert: int
    """k, the expert within layer l."""
    shape: tuple[int, ...]
    """Shape of the whole stack, ``(L, K, I)`` or ``(L, K, O)``."""
    group: Any = field(default=None, compare=False)
    """The EP process group that holds the stack's other experts (None at ``ep_size`` 1)."""


@runtime_checkable
class ExpertSharded(Protocol):
    """A HiLoMoE block that holds only some experts (``DeepSpeedHiLoMoELinear``)."""

    def expert_slots(self) -> dict[str, ExpertSlot]:
        """Each expert parameter (name inside the block) and its place in the reference stacks."""


def expert_slots(dense: nn.Module) -> dict[str, tuple[str, ExpertSlot]]:
    """Parameter name in ``dense`` -> (reference name in ``dense``'s reference model, its slot)."""
    out: dict[str, tuple[str, ExpertSlot]] = {}
    for path, block in moe_blocks(dense):
        if isinstance(block, ExpertSharded):
            prefix = f"{path}." if path else ""
            for local, slot in block.expert_slots().items():
                out[prefix + local] = (prefix + slot.stack, slot)
    return out


def reference_shapes(dense: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every entry of the state dict of ``dense``'s reference model (parameters, persistent buffers), with its shape."""
    slots = expert_slots(dense)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, t in dense.state_dict(keep_vars=True).items():
        ref, slot = slots.get(name, (name, None))
        shapes[ref] = slot.shape if slot is not None else tuple(t.shape)
    return shapes


def _buffers(dense: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict's entries that are not parameters (persistent buffers)."""
    params = dict(dense.named_parameters())
    return {n: t for n, t in dense.state_dict(keep_vars=True).items() if n not in params}


def to_reference(dense: nn.Module, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference-layout tensors from this rank's per-parameter ``values`` (collective over EP groups).

    ``values`` maps names of ``dense`` to full tensors (or scalars: a ``step``, reduced by max).
    Every rank of an EP group must pass the same names.
    """
    slots = expert_slots(dense)
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, value in values.items():
        if name not in slots:
            out[name] = value
            continue
        ref, slot = slots[name]
        groups[ref] = slot.group
        if value.dim() == 0:
            out[ref] = torch.maximum(out[ref], value) if ref in out else value.clone()
            continue
        if ref not in out:
            out[ref] = value.new_zeros(slot.shape)
        out[ref][slot.layer, slot.expert] = value
    for ref in sorted(groups):
        if groups[ref] is not None:
            op = dist.ReduceOp.MAX if out[ref].dim() == 0 else dist.ReduceOp.SUM
            dist.all_reduce(out[ref], op=op, group=groups[ref])
    return out


def from_reference(slots: dict[str, tuple[str, ExpertSlot]], name: str, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of the reference-layout tensor ``full`` for parameter ``name`` (``slots``: ``expert_slots``)."""
    if name not in slots or full.dim() == 0:
        return full
    _, slot = slots[name]
    return full[slot.layer, slot.expert]


class ParamAccess(Protocol):
    """How a backend reads and writes one parameter's fp32 value and optimizer state."""

    def value(self, p: nn.Parameter) -> torch.Tensor:
        """The full fp32 value (may be collective over the parameter's data-parallel group)."""

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Overwrite the parameter (and any master copy)."""

    def state(self, p: nn.Parameter) -> dict[str, torch.Tensor]:
        """The full optimizer state (may be collective); empty when the parameter has none."""

    def prepare_state(self) -> None:
        """Make the optimizer's state exist so it can be written into (before ``set_state``)."""

    def set_state(self, p: nn.Parameter, state: dict[str, torch.Tensor]) -> None:
        """Overwrite the optimizer state; an empty dict makes it fresh."""


def save_reference(
    directory: Path, dense: nn.Module, access: ParamAccess, scheduler: dict[str, Any], layout: DenseLayout
) -> None:
    """Write the layout-free form of ``dense`` and its optimizer under ``directory`` (collective)."""
    params = dict(dense.named_parameters())
    values = {name: access.value(p) for name, p in params.items()}
    values.update({name: b.detach().float() for name, b in _buffers(dense).items()})
    model = to_reference(dense, values)
    states = {name: access.state(p) for name, p in params.items()}
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted({k for s in states.values() for k in s}):
        per_key = to_reference(dense, {name: s[key] for name, s in states.items() if key in s})
        for ref, tensor in per_key.items():
            optim.setdefault(ref, {})[key] = tensor
    dcp.save({"model": model, "optim": {"state": optim}, "scheduler": scheduler}, checkpoint_id=str(directory))
    layout.save(directory)


def check_shapes(directory: Path, dense: nn.Module) -> dict[str, tuple[int, ...]]:
    """The reference shapes of ``dense``, after checking the layout-free checkpoint in ``directory`` has them.

    Raises:
        ValueError: a missing or extra parameter, or another shape, in one line naming the parameter and
            both shapes.
    """
    metadata = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    shapes = reference_shapes(dense)
    saved = {k[len("model.") :]: m for k, m in metadata.items() if k.startswith("model.")}
    missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
    if missing or extra:
        what = (
            f"lacks {', '.join(missing[:4])}" if missing else f"has parameters this model lacks: {', '.join(extra[:4])}"
        )
        raise ValueError(f"{directory}: the dense checkpoint {what} (a different model config?)")
    for name, shape in shapes.items():
        got = saved[name]
        if not isinstance(got, TensorStorageMetadata) or tuple(got.size) != shape:
            size = list(got.size) if isinstance(got, TensorStorageMetadata) else "not a tensor"
            raise ValueError(
                f"{directory}: dense parameter {name}: the checkpoint has shape {size}, this model {list(shape)} "
                "(model.hilomoe num_experts / num_layers or a layer width changed?)"
            )
    return shapes


def load_reference(directory: Path, dense: nn.Module, access: ParamAccess, scheduler: dict[str, Any]) -> list[str]:
    """Load the layout-free form into ``dense`` and its optimizer; fill ``scheduler`` in place.

    Returns the parameters (reference names, e.g. ``<block>.experts_v``) that found no optimizer state in
    the checkpoint: they start fresh.

    Raises:
        ValueError: the checkpoint's model differs (``check_shapes``).
    """
    metadata = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    shapes = check_shapes(directory, dense)
    model = {name: torch.empty(shape, dtype=torch.float32) for name, shape in shapes.items()}
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for key, meta in metadata.items():
        if key.startswith("optim.state.") and isinstance(meta, TensorStorageMetadata):
            ref, _, state_key = key[len("optim.state.") :].rpartition(".")
            if ref in shapes:
                optim.setdefault(ref, {})[state_key] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    dcp.load({"model": model, "optim": {"state": optim}, "scheduler": scheduler}, checkpoint_id=str(directory))

    slots = expert_slots(dense)
    params = dict(dense.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            ref = slots[name][0] if name in slots else name
            access.set_value(p, from_reference(slots, name, model[ref]))
        for name, b in _buffers(dense).items():
            b.copy_(model[name])
    access.prepare_state()
    fresh: dict[str, None] = {}
    for name, p in params.items():
        ref = slots[name][0] if name in slots else name
        state = {k: from_reference(slots, name, v) for k, v in optim.get(ref, {}).items()}
        if not state:
            fresh[ref] = None
        access.set_state(p, state)
    return list(fresh)


def warn_fresh(directory: Path, fresh: list[str], why: str) -> None:
    """The warning for parameters whose optimizer state restarts, naming them."""
    if fresh:
        shown = ", ".join(fresh[:6]) + (f" and {len(fresh) - 6} more" if len(fresh) > 6 else "")
        log.warning(
            "no optimizer state in %s for %d dense parameters (%s): %s start fresh", directory, len(fresh), why, shown
        )


__all__ = [
    "DenseLayout",
    "ExpertSlot",
    "ExpertSharded",
    "ParamAccess",
    "check_shapes",
    "has_reference_state",
    "load_reference",
    "save_reference",
    "to_reference",
]
