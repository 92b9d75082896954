"""Owners of the dense part: plain PyTorch DDP (``dense_ddp``) or a DeepSpeed engine (``dense_deepspeed``).

Both backends expose the same small interface to the trainer (``DenseBackend``): the module the
model calls, ``backward``, ``step``, ``zero_grad``, the learning rate, and their part of a
checkpoint. The embedding tables are not here: TorchRec updates them inside backward.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from recscale.sharding.checkpoint.dense import DenseState
from recscale.sharding.dense_ddp import DDPDense
from recscale.sharding.dense_deepspeed import DeepSpeedDense


class DenseBackend(Protocol):
    """What the trainer needs from whoever owns the dense parameters."""

    module: nn.Module
    """What ``RecModel`` calls: DDP, a DeepSpeed engine, or the plain module."""
    inner: nn.Module
    """The unwrapped dense arch (for state dicts, FLOPs, diagnostics)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (also runs TorchRec's fused sparse update)."""

    def step(self) -> None:
        """Clip, optimizer step, learning-rate schedule step."""

    def zero_grad(self) -> None:
        """Clear dense gradients."""

    def lr(self) -> float:
        """Current learning rate of the first parameter group."""

    def set_lr_scales(self, scales: list[float]) -> None:
        """Multiply each optimizer group's scheduled learning rate by ``scales[i]`` from now on."""

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (tagged with a ``role``)."""

    def refresh(self) -> None:
        """Re-wrap after ``requires_grad`` changed (a training stage froze or unfroze parameters)."""

    def checkpoint_state(self) -> DenseState:
        """The dense part of a checkpoint (``recscale.sharding.checkpoint.dense``): save and load at any layout."""


__all__ = ["DDPDense", "DeepSpeedDense", "DenseBackend"]
