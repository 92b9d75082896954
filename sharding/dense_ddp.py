"""The dense part under plain PyTorch DDP (or unwrapped, on one rank) with a torch optimizer."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recscale.configs.schema import DenseOptimizerConfig
from recscale.modules.hilomoe import role_param_groups
from recscale.sharding.checkpoint.dense import DenseLayout, DenseState
from recscale.sharding.checkpoint.param_access import TorchParamAccess
from recscale.sharding.dense_optim import build_dense_optimizer, lr_lambda, restart_schedule, scale_scheduled_lrs


class DDPDense:
    """Dense part under PyTorch DDP (or plain, on one rank) with a torch optimizer.

    Args:
        dense: the dense arch, already on its device.
        cfg: dense optimizer settings.
        total_steps: steps of the run (for the learning-rate schedule).
    """

    def __init__(self, dense: nn.Module, cfg: DenseOptimizerConfig, total_steps: int) -> None:
        self.inner = dense
        self.cfg = cfg
        self.module: nn.Module = dense
        self.refresh()
        # one group per parameter role (all parameters, frozen ones too): stages rescale them
        self.optimizer = build_dense_optimizer(role_param_groups(dense), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self._base_lrs = [float(lr) for lr in self.scheduler.base_lrs]

    def refresh(self) -> None:
        """Wrap the dense arch in a new DDP (after a stage changed which parameters train).

        DDP fixes its parameter set when it is built: a kept DDP would silently skip reducing the
        gradients of parameters unfrozen later.
        """
        if dist.is_initialized() and dist.get_world_size() > 1:
            if any(p.requires_grad for p in self.inner.parameters()):
                self.module = DistributedDataParallel(self.inner)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups (one per role)."""
        groups: list[dict[str, Any]] = self.optimizer.param_groups
        return groups

    def set_lr_scales(self, scales: list[float]) -> None:
        """Scale each group's scheduled learning rate (a stage's per-role rates)."""
        scale_scheduled_lrs(self.scheduler, self._base_lrs, scales)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``: DDP averages dense gradients over ranks."""
        loss.backward()

    def step(self) -> None:
        """Clip (optional), step, advance the schedule."""
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.inner.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    def zero_grad(self) -> None:
        """Clear gradients (set to None)."""
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        """Current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def checkpoint_state(self) -> DenseState:
        """The dense part of a checkpoint: whole parameters (replicated: each is written by one rank)."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        return DenseState(
            self.inner,
            TorchParamAccess(self.optimizer),
            DenseLayout(backend="ddp", world_size=world),
            lambda: self.scheduler.last_epoch,
            lambda step: restart_schedule(self.scheduler, self._base_lrs, step),
        )


__all__ = ["DDPDense"]
