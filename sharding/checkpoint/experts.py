"""Where each parameter of a dense arch sits in its single-device reference model.

Most parameters *are* their reference tensor. A block that holds only some experts
(expert parallelism) says, for each of its expert parameters, which reference tensor it is a
piece of (``ExpertSharded.expert_slots``): a HiLoMoE block's expert ``(l, k)`` is the row
``experts_v[l, k]`` of the reference stack ``[L, K, I]``; a block whose experts are whole tensors
names the reference tensor itself (``index=()``). Checkpoints store every reference tensor
flattened to 1-D, so each parameter is one contiguous range of one reference tensor (``Placement``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class ExpertSlot:
    """Where one expert parameter of an expert-parallel block sits in the reference model.

    The parameter equals ``reference[index]`` of the reference tensor named ``reference`` (inside
    the block), whose whole shape is ``shape``: ``index=(l, k)`` is the row of layer l, expert k of a
    stack ``[L, K, I]``; ``index=()`` is the whole tensor (an expert that is a tensor of its own).
    """

    reference: str
    """Name, inside the block, of the reference tensor (e.g. ``experts_v``, ``experts.5.w1``)."""
    index: tuple[int, ...]
    """Leading indices into the reference tensor; () = the whole tensor."""
    shape: tuple[int, ...]
    """Shape of the whole reference tensor."""

    def span(self) -> tuple[int, int]:
        """(first element, element count) of ``reference[index]`` in the flattened reference tensor."""
        if len(self.index) > len(self.shape) or any(not 0 <= i < n for i, n in zip(self.index, self.shape)):
            raise ValueError(f"expert slot {self.reference}{list(self.index)} is outside its shape {list(self.shape)}")
        inner = math.prod(self.shape[len(self.index) :])
        start = 0
        for i, n in zip(self.index, self.shape):
            start = start * n + i
        return start * inner, inner


@runtime_checkable
class ExpertSharded(Protocol):
    """A block that holds only some of its experts (expert parallelism)."""

    def expert_slots(self) -> dict[str, ExpertSlot]:
        """Each expert parameter (name inside the block) and its slot in the reference model."""


@dataclass(frozen=True)
class Placement:
    """One parameter's range in its flattened reference tensor."""

    reference: str
    """Name of the reference tensor in the reference model of the dense arch."""
    start: int
    """First element of the parameter in the flattened reference tensor."""
    shape: tuple[int, ...]
    """Shape of the whole reference tensor."""


def expert_slots(dense: nn.Module) -> dict[str, tuple[str, ExpertSlot]]:
    """Parameter name in ``dense`` -> (reference name in ``dense``'s reference model, its slot)."""
    out: dict[str, tuple[str, ExpertSlot]] = {}
    for path, block in dense.named_modules():
        if isinstance(block, ExpertSharded):
            prefix = f"{path}." if path else ""
            for local, slot in block.expert_slots().items():
                if prefix + local in out:
                    raise ValueError(f"parameter {prefix + local} has an expert slot in two blocks")
                out[prefix + local] = (prefix + slot.reference, slot)
    return out


def placements(dense: nn.Module) -> dict[str, Placement]:
    """Every entry of ``dense``'s state dict (parameters, persistent buffers) and its reference range.

    Raises:
        ValueError: an expert slot whose size is not its parameter's, naming both.
    """
    slots = expert_slots(dense)
    out = {}
    for name, tensor in dense.state_dict(keep_vars=True).items():
        if name not in slots:
            out[name] = Placement(name, 0, tuple(tensor.shape))
            continue
        reference, slot = slots[name]
        start, numel = slot.span()
        if numel != tensor.numel():
            raise ValueError(
                f"expert slot of {name}: {reference}{list(slot.index)} holds {numel} numbers, the parameter "
                f"{tensor.numel()} ({list(tensor.shape)})"
            )
        out[name] = Placement(reference, start, slot.shape)
    return out


__all__ = ["ExpertSharded", "ExpertSlot", "Placement", "expert_slots", "placements"]
