"""Owners of the dense part: plain PyTorch DDP, or a DeepSpeed engine (ZeRO 0/1/2, MoE experts).

Both backends expose the same small interface to the trainer (``DenseBackend``): the module the
model calls, ``backward``, ``step``, ``zero_grad``, the learning rate, and checkpoint state. The
embedding tables are not here: TorchRec updates them inside backward.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.nn.parallel import DistributedDataParallel

from recscale.configs.schema import DenseOptimizerConfig
from recscale.modules.hilomoe import role_param_groups

log = logging.getLogger("recscale")


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

    def save(self, directory: Path) -> None:
        """Write dense weights and optimizer state under ``directory`` (collective)."""

    def load(self, directory: Path) -> None:
        """Read what ``save`` wrote (collective)."""


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


def build_dense_optimizer(params: Any, cfg: DenseOptimizerConfig) -> torch.optim.Optimizer:
    """The dense optimizer named by ``cfg`` over ``params`` (tensors or parameter groups)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer and schedule state, as DCP saves and loads them.

        The optimizer's state comes from ``get_optimizer_state_dict``, which materialises Adam's
        moments even before the first step: DCP loads *into* the tensors it is given, so a fresh
        optimizer's empty state would silently load nothing.
        """
        return {
            "model": self.inner.state_dict(),
            "optim": get_optimizer_state_dict(self.inner, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }

    def save(self, directory: Path) -> None:
        """Dense state with DCP (replicated tensors are written once)."""
        dcp.save(self.state_dict(), checkpoint_id=str(directory))

    def load(self, directory: Path) -> None:
        """Read what ``save`` wrote, into the current layout (any world size).

        Parameters without optimizer state in the checkpoint (frozen when it was written, e.g. experts
        in a training stage that trained only the backbone) keep fresh state.
        """
        state = self.state_dict()
        saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
        optim_state = state["optim"]["state"]
        missing = [
            name
            for name, entries in optim_state.items()
            if any(f"optim.state.{name}.{k}" not in saved for k in entries)
        ]
        to_load = {
            **state,
            "optim": {**state["optim"], "state": {k: v for k, v in optim_state.items() if k not in missing}},
        }
        dcp.load(to_load, checkpoint_id=str(directory))
        self.inner.load_state_dict(to_load["model"])
        state["optim"]["state"].update(to_load["optim"]["state"])
        state["optim"]["param_groups"] = to_load["optim"]["param_groups"]
        set_optimizer_state_dict(self.inner, self.optimizer, state["optim"])
        self.scheduler.load_state_dict(to_load["scheduler"])
        if missing:
            log.warning(
                "no optimizer state in %s for %d parameters (e.g. %s): they start fresh",
                directory,
                len(missing),
                missing[0],
            )


class DeepSpeedDense:
    """Dense part under a DeepSpeed engine: ZeRO 0/1/2 and expert-parallel MoE layers.

    Expert parameters (tagged by DeepSpeed) get their own optimizer groups, as DeepSpeed requires
    under ZeRO 1/2. Never fp16: loss scaling would reach TorchRec's fused sparse update unscaled
    (DESIGN.md §3).

    Args:
        dense: the dense arch (its MoE layers already swapped to DeepSpeed's).
        cfg: dense optimizer settings.
        total_steps: steps of the run.
        zero_stage: 0, 1 or 2.
        micro_batch_per_rank: examples per rank per step.
        bf16: keep the dense weights in bf16 (DeepSpeed keeps fp32 master weights).
    """

    def __init__(
        self,
        dense: nn.Module,
        cfg: DenseOptimizerConfig,
        total_steps: int,
        zero_stage: int,
        micro_batch_per_rank: int,
        bf16: bool,
    ) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        import deepspeed
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        self.inner = dense
        self.cfg = cfg
        # one group per parameter role (stages rescale them), expert parameters split into their own
        # groups as DeepSpeed requires under ZeRO 1/2 (the split keeps the ``role`` tag)
        groups = split_params_into_different_moe_groups_for_optimizer(role_param_groups(dense))
        # the split can leave a role's group empty (all its parameters were experts); ZeRO drops empty
        # groups, which would shift every later group against the scheduler's per-group rates
        groups = [g for g in groups if g["params"]]
        optimizer = build_dense_optimizer(groups, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        bucket = int(min(5e8, max(1 << 20, sum(p.numel() for p in dense.parameters()))))
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch_per_rank,
            "gradient_accumulation_steps": 1,  # >1 would desynchronise the fused sparse update
            "zero_optimization": {
                "stage": zero_stage,
                # DeepSpeed's default buckets hold 5e8 elements (2 GB of fp32, allocated and
                # page-faulted per step on CPU, ~1 s); a bucket never needs more than the model
                "reduce_bucket_size": bucket,
                "allgather_bucket_size": bucket,
            },
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 62,
            "wall_clock_breakdown": False,
            "bf16": {"enabled": bf16},
        }
        if cfg.grad_clip > 0:
            config["gradient_clipping"] = cfg.grad_clip
        self._client_scheduler = scheduler
        self._base_lrs = [float(lr) for lr in scheduler.base_lrs]
        if dist.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend())
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=dense, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.module: nn.Module = self.engine

    def param_groups(self) -> list[dict[str, Any]]:
        """The client optimizer's groups (role-tagged; DeepSpeed's optimizer wraps them)."""
        groups: list[dict[str, Any]] = self._client_scheduler.optimizer.param_groups
        return groups

    def set_lr_scales(self, scales: list[float]) -> None:
        """Scale each group's scheduled learning rate (a stage's per-role rates)."""
        scale_scheduled_lrs(self._client_scheduler, self._base_lrs, scales)

    def refresh(self) -> None:
        """The engine was built with every parameter trainable and keeps them all; frozen ones get lr 0.

        Under ZeRO 1/2 a frozen group's Adam state still advances on the zero gradients DeepSpeed
        fills in (its weights do not move: lr 0); see docs/models/hilomoe.md.
        """

    def backward(self, loss: torch.Tensor) -> None:
        """The engine's backward (ZeRO gradient partitioning, expert all-reduce groups)."""
        self.engine.backward(loss)

    def step(self) -> None:
        """The engine's step: clip, optimizer, schedule, zero grads."""
        self.engine.step()

    def zero_grad(self) -> None:
        """The engine clears gradients itself in ``step``."""

    def lr(self) -> float:
        """Current learning rate."""
        rates: list[float] = self.engine.get_lr()
        return float(rates[0])

    def save(self, directory: Path) -> None:
        """DeepSpeed's checkpoint layout (per-expert files, ZeRO optimizer shards); collective."""
        self.engine.save_checkpoint(str(directory), tag="dense", save_latest=False)

    def load(self, directory: Path) -> None:
        """Read what ``save`` wrote (same world size and ``ep_size``)."""
        path, _ = self.engine.load_checkpoint(str(directory), tag="dense", load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed dense checkpoint under {directory}")
