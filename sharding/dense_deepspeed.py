"""The dense part under a DeepSpeed engine: ZeRO 0/1/2 and expert-parallel MoE layers."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recscale.configs.schema import DenseOptimizerConfig
from recscale.modules.hilomoe import moe_blocks, role_param_groups
from recscale.sharding.checkpoint.dense import DenseLayout, DenseState
from recscale.sharding.checkpoint.experts import ExpertSharded
from recscale.sharding.checkpoint.param_access import ParamAccess, TorchParamAccess
from recscale.sharding.dense_optim import build_dense_optimizer, lr_lambda, restart_schedule, scale_scheduled_lrs
from recscale.sharding.process_group import deepspeed_environment
from recscale.sharding.zero_fragments import ZeroParamAccess, is_zero_partitioned


class DeepSpeedDense:
    """Dense part under a DeepSpeed engine: ZeRO 0/1/2 and expert-parallel MoE layers.

    Expert parameters (tagged by DeepSpeed) get their own optimizer groups, as DeepSpeed requires
    under ZeRO 1/2. Never fp16: loss scaling would reach TorchRec's fused sparse update unscaled
    (docs/sharding.md).

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
        deepspeed_environment()
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
        # DeepSpeed clips at norm 1.0 unless told otherwise: 0 (our "off") must be passed explicitly
        config["gradient_clipping"] = cfg.grad_clip
        if cfg.grad_clip <= 0 and zero_stage in (1, 2) and not (bf16 and zero_stage == 1):
            # without clipping the gradient norm serves only DeepSpeed's overflow check, which reads it on
            # the host every step (a GPU sync); fp32 and bf16 gradients need no loss-scale overflow check.
            # (DeepSpeed refuses this for bf16 at ZeRO 1, whose optimizer checks the norm itself.)
            config["zero_optimization"]["compute_grad_norm"] = False
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

    def layout(self) -> DenseLayout:
        """This engine's layout: world size, ``ep_size``, ZeRO stage and HiLoMoE dispatch.

        ``ep_size`` comes from any block that holds only some experts (HiLoMoE's or Kunlun's).
        """
        sharded = [m for m in self.inner.modules() if isinstance(m, ExpertSharded) and hasattr(m, "ep_size")]
        hilomoe = [b for _, b in moe_blocks(self.inner) if hasattr(b, "ep_size")]
        return DenseLayout(
            backend="deepspeed",
            world_size=dist.get_world_size() if dist.is_initialized() else 1,
            ep_size=int(getattr(sharded[0], "ep_size", 1)) if sharded else 1,
            zero_stage=int(self.engine.zero_optimization_stage()),
            dispatch=str(getattr(hilomoe[0], "dispatch", "")) if hilomoe else "",
        )

    def _access(self) -> ParamAccess:
        """ZeRO 1/2: fragments of the fp32 partitions; ZeRO 0: whole parameters (bf16: their fp32 copies)."""
        opt = self.engine.optimizer
        if is_zero_partitioned(opt):
            return ZeroParamAccess(opt)
        masters = {}
        if hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups"):  # bf16 at ZeRO 0: fp32 copies stepped
            for low, high in zip(opt.fp16_groups, opt.fp32_groups):
                masters.update({id(p): master for p, master in zip(low, high)})
        return TorchParamAccess(self._client_scheduler.optimizer, masters)

    def _restart(self, step: int) -> None:
        restart_schedule(self._client_scheduler, self._base_lrs, step)
        self.engine.global_steps = step
        self.engine.global_samples = step * self.engine.train_batch_size()

    def checkpoint_state(self) -> DenseState:
        """The dense part of a checkpoint: each rank's ZeRO fragments or experts, where they lie."""
        return DenseState(
            self.inner, self._access(), self.layout(), lambda: self._client_scheduler.last_epoch, self._restart
        )


__all__ = ["DeepSpeedDense"]
