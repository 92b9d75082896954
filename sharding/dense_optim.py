"""The dense optimizer and its learning-rate schedule, shared by both dense backends."""

from __future__ import annotations

import math
from typing import Any

import torch

from recscale.configs.schema import DenseOptimizerConfig


def build_dense_optimizer(params: Any, cfg: DenseOptimizerConfig) -> torch.optim.Optimizer:
    """The dense optimizer named by ``cfg`` over ``params`` (tensors or parameter groups)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_lambda(cfg: DenseOptimizerConfig, total_steps: int) -> Any:
    """Multiplier of the peak learning rate at a step: linear warm-up, then constant/cosine/linear."""
    warmup = cfg.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def scale_scheduled_lrs(
    scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float], scales: list[float]
) -> None:
    """Make ``scheduler`` schedule ``base_lrs[i] * scales[i]`` and apply it to the current step now."""
    scheduler.base_lrs = [b * s for b, s in zip(base_lrs, scales)]
    step = max(scheduler.last_epoch, 0)
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)


def restart_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float], last_epoch: int) -> None:
    """Put ``scheduler`` at step ``last_epoch`` with the unscaled ``base_lrs`` (the loop re-applies stage scales).

    A checkpoint carries only the schedule's position: the rates follow from it, the config, and the
    stage and plateau state the loop restores.
    """
    scheduler.last_epoch = last_epoch
    scale_scheduled_lrs(scheduler, base_lrs, [1.0] * len(base_lrs))
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]  # type: ignore[attr-defined]


__all__ = ["build_dense_optimizer", "lr_lambda", "restart_schedule", "scale_scheduled_lrs"]
