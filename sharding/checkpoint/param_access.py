"""How the dense checkpoint reaches one parameter's fp32 value and optimizer state, whoever owns them.

A backend hands the checkpoint a ``ParamAccess``. ``held`` returns the part of a parameter this rank
owns, as views: the whole parameter for a replicated optimizer (``TorchParamAccess``, DDP or ZeRO 0),
one ZeRO partition's fragment for a sharded one (``recscale.sharding.zero_fragments``). Saving writes
those views where they lie in the flattened reference tensor; loading reads into them, so nothing is
gathered or materialised beyond what the rank already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class Held:
    """The part of one parameter that this rank owns (tensors are views of the live state)."""

    start: int
    """First element of the owned range in the flattened parameter."""
    value: torch.Tensor
    """1-D fp32 values of the range (the master copy where the optimizer steps one)."""
    state: dict[str, torch.Tensor]
    """1-D elementwise optimizer state of the range (Adam's moments, Adagrad's sums, momentum); {} = none."""
    step: torch.Tensor | None
    """0-d: the optimizer's step count for the parameter (None: none kept)."""


class ParamAccess(Protocol):
    """A backend's parameters and optimizer state, as the dense checkpoint reads and writes them."""

    def held(self, p: nn.Parameter) -> Held | None:
        """The part of ``p`` this rank owns (views), or None when it owns none of its values."""

    def prepare_state(self) -> None:
        """Before a load: make every optimizer state tensor exist (zeros, step 0), so ``held`` has targets."""

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Overwrite ``p`` and this rank's master copy with ``value`` (the whole parameter, flat fp32)."""

    def set_step(self, p: nn.Parameter, step: float) -> None:
        """Set the optimizer's step count for ``p``."""

    def set_fresh(self, p: nn.Parameter) -> None:
        """Make ``p``'s optimizer state that of a never-stepped parameter."""


def as_step(value: torch.Tensor | float | None) -> torch.Tensor | None:
    """An optimizer's step count (tensor or number) as a 0-d fp32 tensor."""
    if value is None:
        return None
    return torch.tensor(float(value.item() if isinstance(value, torch.Tensor) else value))


def _state_template(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The state a parameter of ``optimizer`` gets at its first step (one step of a twin on a scratch tensor)."""
    scratch = nn.Parameter(torch.zeros(2))
    twin = type(optimizer)([scratch], **optimizer.defaults)
    scratch.grad = torch.zeros(2)
    twin.step()
    return dict(twin.state[scratch])


class TorchParamAccess:
    """A torch optimizer that steps whole parameters (DDP, or DeepSpeed ZeRO 0).

    Args:
        optimizer: the torch optimizer.
        masters: the optimizer's own tensor for a module parameter where it steps an fp32 copy
            (DeepSpeed's masters of bf16 weights under ZeRO 0), by ``id`` of the module parameter.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, masters: dict[int, torch.Tensor] | None = None) -> None:
        self.optimizer = optimizer
        self.masters = masters or {}

    def _stepped(self, p: nn.Parameter) -> torch.Tensor:
        return self.masters.get(id(p), p)

    def held(self, p: nn.Parameter) -> Held:
        """The whole parameter (every rank owns all of it)."""
        stepped = self._stepped(p)
        state = self.optimizer.state.get(stepped, {})
        elementwise = {
            k: v.detach().view(-1) for k, v in state.items() if torch.is_tensor(v) and v.shape == stepped.shape
        }
        return Held(0, stepped.detach().float().reshape(-1), elementwise, as_step(state.get("step")))

    def prepare_state(self) -> None:
        """Zero state (step 0) for never-stepped parameters, contiguous state tensors for the others."""
        template = _state_template(self.optimizer)
        for group in self.optimizer.param_groups:
            for stepped in group["params"]:
                state = self.optimizer.state.get(stepped)
                if not state:
                    self.optimizer.state[stepped] = {
                        k: torch.zeros_like(stepped, memory_format=torch.contiguous_format)
                        if v.dim()
                        else torch.zeros_like(v)
                        for k, v in template.items()
                    }
                else:
                    for k, v in state.items():
                        if torch.is_tensor(v) and not v.is_contiguous():
                            state[k] = v.contiguous()

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Copy into the parameter and its master copy."""
        with torch.no_grad():
            p.copy_(value.view(p.shape))
            self._stepped(p).copy_(value.view(p.shape))

    def set_step(self, p: nn.Parameter, step: float) -> None:
        """The parameter's own step count."""
        state = self.optimizer.state[self._stepped(p)]
        if torch.is_tensor(state.get("step")):
            state["step"].fill_(step)
        else:
            state["step"] = int(step)

    def set_fresh(self, p: nn.Parameter) -> None:
        """No state at all, as for a never-stepped parameter."""
        self.optimizer.state.pop(self._stepped(p), None)


__all__ = ["Held", "ParamAccess", "TorchParamAccess", "as_step"]
