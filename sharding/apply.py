"""``parallelize()``: the single, ordered place where a built model becomes a distributed one.

Order (fixed; docs/sharding.md):
  1. fused sparse optimizer on the tables (must precede sharding),
  2. embedding plan (planner or hand-built), on every rank,
  3. TorchRec ``DistributedModelParallel`` over the tables only (it adds no DDP: no dense params),
  4. expert parallelism: HiLoMoE blocks and routed MoWE layers swapped for expert-parallel twins
     (``dense: deepspeed``; experts over ``ep_size`` ranks), or the balance statistics made global;
     ExFM student adapters that step themselves average their gradient over the ranks,
  5. dense data parallelism: DDP, or a DeepSpeed engine (ZeRO 0/1/2),
  6. the top-level ``RecModel`` the train pipeline drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.optim.keyed import KeyedOptimizerWrapper

from recscale.configs.schema import OptimizerConfig, ShardingConfig
from recscale.modules.build import BuiltModel
from recscale.modules.distillation import StudentAdapter
from recscale.modules.managed_rows import RowReset
from recscale.modules.model import RecModel
from recscale.sharding.dense_parallel import DDPDense, DeepSpeedDense, DenseBackend
from recscale.sharding.fused_optim import apply_sparse_optimizer, unfused_table_optimizer
from recscale.sharding.managed_exchange import GroupExchange
from recscale.sharding.moe_collectives import install_global_balance_stats
from recscale.sharding.plan import EmbeddingPlan
from recscale.sharding.planner import PlanningError, plan_embeddings, sharders
from recscale.sharding.process_group import DistInfo, all_ranks_agree, host_group, mean_across_ranks


class Updater:
    """Backward and optimizer step of the whole model: the dense backend and the tables' optimizer.

    Fused (TBE) tables are updated inside backward; data-parallel tables have an ordinary optimizer
    (``unfused_table_optimizer``) that is zeroed and stepped here, after the dense one.
    """

    def __init__(
        self, dense: DenseBackend, fused_optimizer: Any, table_optimizer: KeyedOptimizerWrapper | None
    ) -> None:
        self.dense = dense
        self.fused_optimizer = fused_optimizer
        self.table_optimizer = table_optimizer
        self._sparse_lrs = [[g["lr"] for g in opt.param_groups] for opt in self._sparse_optimizers()]

    def _sparse_optimizers(self) -> list[Any]:
        return [self.fused_optimizer] + ([self.table_optimizer] if self.table_optimizer is not None else [])

    def set_sparse_lr_scale(self, scale: float) -> None:
        """Scale the tables' learning rate (a training stage's ``sparse_lr_scale``; 0 freezes them).

        The fused kernels read their rate from the optimizer's groups on ``zero_grad``/``step``, so
        the new rate is pushed to them here.
        """
        for opt, lrs in zip(self._sparse_optimizers(), self._sparse_lrs):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * scale
        self.fused_optimizer.zero_grad()

    def zero_grad(self) -> None:
        """Clear dense and data-parallel-table gradients."""
        self.dense.zero_grad()
        if self.table_optimizer is not None:
            self.table_optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate (fused tables update here)."""
        self.dense.backward(loss)

    def step(self) -> None:
        """Step the dense optimizer and the data-parallel tables' optimizer."""
        self.dense.step()
        if self.table_optimizer is not None:
            self.table_optimizer.step()


@dataclass
class ParallelModel:
    """A model ready to train: the pieces the trainer drives and checkpoints."""

    model: RecModel
    """Top-level module (sparse DMP + dense backend module + loss)."""
    sparse: DistributedModelParallel
    """The sharded tables and their fused optimizer."""
    dense: DenseBackend
    """Owner of the dense parameters and their optimizer."""
    plan: EmbeddingPlan
    """Where the tables went (saved as plan.json)."""
    sharding_plan: ShardingPlan
    """TorchRec's form of the same plan."""
    updater: Updater
    """Backward and optimizer steps of both halves."""

    def refresh_dense(self) -> None:
        """Re-wrap the dense arch after a training stage changed ``requires_grad`` (DDP is rebuilt)."""
        self.dense.refresh()
        self.model.dense = self.dense.module


def average_adapter_gradients(dense: nn.Module) -> None:
    """Give each ExFM student adapter that takes its own step the ranks' mean of its gradient.

    ``adapter_update: before`` (``modules/distillation.py``): every rank's adapter then stays the same.
    """
    for module in dense.modules():
        if isinstance(module, StudentAdapter) and module.own_lr > 0:
            module.grad_reducer = mean_across_ranks


def parallelize(
    built: BuiltModel,
    sharding: ShardingConfig,
    optimizer: OptimizerConfig,
    *,
    info: DistInfo,
    batch_size_per_rank: int,
    total_steps: int,
    precision: str,
    aux_loss_weight: float,
) -> ParallelModel:
    """Shard the tables, wrap the dense part, and assemble the model, in that order.

    Args:
        built: the model from ``recscale.modules.build.build_model`` (tables on ``meta``).
        sharding: the ``sharding`` section.
        optimizer: the ``optimizer`` section.
        info: this process's rank, world and device.
        batch_size_per_rank: examples per rank per step.
        total_steps: steps of the run (learning-rate schedules).
        precision: ``fp32`` or ``bf16``.
        aux_loss_weight: weight of the dense arch's auxiliary loss.

    Raises:
        PlanningError: on every rank, with the planner's reason, when the tables cannot be placed.
    """
    # 1. fused optimizer on the tables
    apply_sparse_optimizer(built.sparse, optimizer.sparse)

    # 2. plan on every rank (no collective: a failure cannot leave a rank waiting)
    error = ""
    try:
        plan, described = plan_embeddings(
            built.sparse,
            sharding,
            world_size=info.world_size,
            local_world_size=info.local_world_size,
            device=info.device.type,
            batch_size_per_rank=batch_size_per_rank,
            sparse_optimizer=optimizer.sparse.name,
        )
    except PlanningError as err:
        error = str(err)
    if not all_ranks_agree(not error):
        raise PlanningError(error or "the embedding planner failed on another rank; see its log")
    _check_same_plan(described)

    # 3. the tables
    env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)  # type: ignore[arg-type]
    dmp = DistributedModelParallel(built.sparse, device=info.device, plan=plan, env=env, sharders=sharders())

    # 4. expert parallelism, MoE balance statistics and own-step adapters over the global batch
    bf16 = precision == "bf16"
    dense_module = built.dense.to(info.device)
    if sharding.dense == "deepspeed":
        from recscale.sharding.expert_parallel import apply_expert_parallel  # imports deepspeed

        dense_module = apply_expert_parallel(dense_module, sharding.ep_size, sharding.moe)
    elif sharding.moe.balance_stats == "global" and info.world_size > 1:
        install_global_balance_stats(dense_module)
    if info.world_size > 1:
        average_adapter_gradients(dense_module)

    # 5. the dense part
    backend: DenseBackend
    if sharding.dense == "deepspeed":
        backend = DeepSpeedDense(
            dense_module,
            optimizer.dense,
            total_steps,
            zero_stage=sharding.zero_stage,
            micro_batch_per_rank=batch_size_per_rank,
            bf16=bf16,
        )
    else:
        backend = DDPDense(dense_module, optimizer.dense, total_steps)

    # 6. the top-level model (managed-collision remapper replicated: ids gathered over the world)
    table_optimizer = unfused_table_optimizer(dmp, optimizer.sparse)
    managed = built.managed
    if managed is not None:
        managed = managed.on(info.device)
        if info.world_size > 1:
            managed.exchange = GroupExchange(dist.GroupMember.WORLD)  # type: ignore[arg-type]
        managed.on_evict = RowReset(dmp, table_optimizer)
    model = RecModel(
        sparse=dmp,
        dense=backend.module,
        compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        autocast=bf16 and sharding.dense == "ddp",
        device_type=info.device.type,
        aux_loss_weight=aux_loss_weight,
        uses_sequences=built.uses_sequences,
        uses_timestamps=built.uses_timestamps,
        uses_domain=built.uses_domain,
        teacher_clip=built.teacher_clip,
        distills=built.distills,
        task_loss=built.task_loss.to(info.device) if built.task_loss is not None else None,
        perturbation=built.perturbation.to(info.device) if built.perturbation is not None else None,
        managed_ids=managed,
    )
    updater = Updater(backend, dmp.fused_optimizer, table_optimizer)
    return ParallelModel(model=model, sparse=dmp, dense=backend, plan=described, sharding_plan=plan, updater=updater)


def _check_same_plan(plan: EmbeddingPlan) -> None:
    """Every rank must have computed the same plan (the planner is deterministic; this proves it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(plan.to_json(), sort_keys=True).encode()).digest()[:8]
    mine = torch.tensor(list(digest), dtype=torch.int64)
    lowest = mine.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN, group=host_group())
    if not all_ranks_agree(bool(torch.equal(mine, lowest))):
        raise PlanningError("ranks computed different embedding plans; the planner is not deterministic here")


def save_plan(parallel: ParallelModel, run_dir: Path) -> None:
    """Write ``plan.json`` (rank 0's view; every rank has the same)."""
    parallel.plan.save(run_dir / "plan.json")
