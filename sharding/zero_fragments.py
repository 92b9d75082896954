"""A DeepSpeed ZeRO 1/2 optimizer's fragments of each parameter, for the dense checkpoint (``ParamAccess``).

ZeRO 1/2 keep the full weights on every rank but split the fp32 master weights and the optimizer
state into one flat partition per rank and optimizer group. A parameter's *fragment* is its overlap
with this rank's partition. The checkpoint writes and reads fragments in place, so a rank touches only
its own partition (DeepSpeed's ``safe_get_full_*`` helpers would all-reduce every full tensor to every
rank instead).

DeepSpeed has no public API for a rank's own fragment under ZeRO 1/2 (its ``safe_get_local_*`` are
ZeRO-3 only), so this module reads DeepSpeed's state directly; ``tests/sharding/test_deepspeed_private.py``
pins every attribute used and fails, naming it, when a DeepSpeed release changes one:

- ``param._hp_mapping`` (``deepspeed.utils.tensor_fragment.tensor_fragment``, None when the parameter
  lies wholly in other ranks' partitions): ``lp_fragment_address.start`` (the fragment's first element
  in the flattened parameter), ``hp_fragment`` (its fp32 master values, a view into the partition),
  ``hp_fragment_address.start / numel`` (its place in the partition), ``param_group_index``;
- ``optimizer.optimizer``: the wrapped torch optimizer, whose group ``i`` steps the one flat fp32
  partition ``param_groups[i]["params"][0]`` and keeps its state in ``state[partition]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recscale.sharding.checkpoint.param_access import Held, as_step


def is_zero_partitioned(optimizer: Any) -> bool:
    """Whether ``optimizer`` (a DeepSpeed engine's) is a ZeRO 1/2 or BF16 optimizer with fp32 partitions."""
    return hasattr(optimizer, "bit16_groups") or hasattr(optimizer, "bf16_groups")


class ZeroParamAccess:
    """Fragments of a DeepSpeed ZeRO 1/2 (or BF16) optimizer's fp32 partitions (``ParamAccess``).

    Args:
        optimizer: the engine's optimizer (``engine.optimizer``).
    """

    def __init__(self, optimizer: Any) -> None:
        self.inner: torch.optim.Optimizer = optimizer.optimizer

    def _partition(self, group: int) -> torch.Tensor:
        partition: torch.Tensor = self.inner.param_groups[group]["params"][0]
        return partition

    def held(self, p: nn.Parameter) -> Held | None:
        """This rank's fragment of ``p``: master values and elementwise state (views), the group's step."""
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:
            return None
        partition = self._partition(mapping.param_group_index)
        state = self.inner.state.get(partition, {})
        where = mapping.hp_fragment_address
        elementwise = {
            k: v.narrow(0, where.start, where.numel)
            for k, v in sorted(state.items())
            if torch.is_tensor(v) and v.shape == partition.shape
        }
        return Held(
            int(mapping.lp_fragment_address.start), mapping.hp_fragment, elementwise, as_step(state.get("step"))
        )

    def prepare_state(self) -> None:
        """Create the state of never-stepped partitions with one zero-gradient step at learning rate 0.

        Every elementwise value it creates is then overwritten (loaded, or zeroed for a fresh
        parameter), and the step it counted is taken back, so a never-stepped group stays at 0.
        """
        empty = [g["params"][0] for g in self.inner.param_groups if not self.inner.state.get(g["params"][0])]
        if not empty:
            return
        rates = [g["lr"] for g in self.inner.param_groups]
        for g in self.inner.param_groups:
            g["lr"] = 0.0
        for partition in empty:
            partition.grad = torch.zeros_like(partition)
        self.inner.step()
        for partition in empty:
            partition.grad = None
            step = self.inner.state[partition].get("step")
            if torch.is_tensor(step):
                step.zero_()
            elif step is not None:
                self.inner.state[partition]["step"] = 0
        for g, rate in zip(self.inner.param_groups, rates):
            g["lr"] = rate

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """The module's copy (every rank keeps the whole weight) and this rank's master fragment."""
        p.data.copy_(value.view(p.shape))
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is not None:
            start = int(mapping.lp_fragment_address.start)
            mapping.hp_fragment.data.copy_(value[start : start + mapping.hp_fragment.numel()])

    def set_step(self, p: nn.Parameter, step: float) -> None:
        """The step of ``p``'s optimizer group (one per partition)."""
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:
            return
        state = self.inner.state.get(self._partition(mapping.param_group_index))
        if not state or "step" not in state:
            return
        if torch.is_tensor(state["step"]):
            state["step"].fill_(step)
        else:
            state["step"] = int(step)

    def set_fresh(self, p: nn.Parameter) -> None:
        """Zero this rank's fragment of ``p``'s elementwise state (the group's step is shared, and kept)."""
        held = self.held(p)
        if held is not None:
            for tensor in held.state.values():
                tensor.zero_()


__all__ = ["ZeroParamAccess", "is_zero_partitioned"]
