"""The ``sharding`` section: the embedding planner, hand-built plans, topology, dense and expert parallelism."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ShardingType = Literal[
    "data_parallel",
    "table_wise",
    "column_wise",
    "row_wise",
    "table_row_wise",
    "table_column_wise",
    "grid_shard",
]
ComputeKernel = Literal["dense", "fused", "fused_uvm", "fused_uvm_caching"]


@dataclass(kw_only=True)
class TableConstraintConfig:
    """Planner constraints for one table (TorchRec ``ParameterConstraints``)."""

    sharding_types: list[ShardingType] = field(default_factory=list)
    """Allowed sharding types (empty = any the device supports)."""
    compute_kernels: list[ComputeKernel] = field(default_factory=list)
    """Allowed compute kernels (empty = any)."""
    pooling_factor: float = 0.0
    """Average ids per example, for the planner's cost model (0 = TorchRec's default)."""


@dataclass(kw_only=True)
class ManualShardConfig:
    """One table of a hand-built plan (bypasses the planner; how row-wise runs on CPU)."""

    type: ShardingType
    """Sharding type of this table."""
    ranks: list[int] = field(default_factory=list)
    """Ranks to place it on: one rank for table_wise, several for column_wise
    (empty = rank 0 for table_wise, all ranks otherwise)."""


@dataclass(kw_only=True)
class TopologyConfig:
    """The devices the planner plans for (TorchRec ``Topology``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Compute device (``auto`` = cuda when available)."""
    hbm_gb: float = 80.0
    """Device memory per rank, GB (used for cuda)."""
    ddr_gb: float = 128.0
    """Host memory per rank, GB."""
    ranks_per_node: int = 0
    """Ranks per node (0 = the local world size of the job)."""
    intra_host_bw_gbps: float = 0.0
    """Intra-host bandwidth per rank, GB/s (0 = TorchRec's default)."""
    inter_host_bw_gbps: float = 0.0
    """Inter-host bandwidth per rank, GB/s (0 = TorchRec's default)."""


@dataclass(kw_only=True)
class MoEParallelConfig:
    """How expert layers (HiLoMoE blocks, Kunlun's routed MoWE) run under expert parallelism (DeepSpeed)."""

    dispatch: Literal["one_round", "per_layer"] = "one_round"
    """``one_round``: all L MoE layers' tokens in one all-to-all pair (routes are known after the
    score chain); ``per_layer``: one all-to-all pair per MoE layer (for comparison)."""
    exchange: Literal["dropless", "padded"] = "dropless"
    """How tokens travel to their experts' ranks. ``dropless``: each rank sends exactly its routes
    (per-expert counts exchanged first, then an all-to-all with those split sizes; nothing dropped; one
    device-to-host read of the split sizes per dispatch). ``padded`` (HiLoMoE only): DeepSpeed's
    ``MOELayer`` exchanges fixed ``[experts, capacity, width]`` buffers (no host read; routes beyond the
    capacity dropped)."""
    capacity_factor: float = 0.0
    """Expert capacity = ceil(tokens * top_k / K * capacity_factor) per rank with ``exchange: padded``;
    routes beyond it are dropped (their expert term is 0). 0 = never drop (capacity = tokens per rank)."""
    min_capacity: int = 4
    """Lower bound of the expert capacity when ``capacity_factor`` > 0."""
    balance_stats: Literal["global", "local"] = "global"
    """Load-balance statistics over the global batch (one small all-reduce per layer; equal to the
    single-device model) or over each rank's batch."""


@dataclass(kw_only=True)
class ShardingConfig:
    """How the model is split across ranks."""

    dense: Literal["ddp", "deepspeed"] = "ddp"
    """Owner of the dense part: PyTorch DDP, or a DeepSpeed engine (ZeRO, expert parallelism)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage for the dense part (``dense: deepspeed``)."""
    ep_size: int = 1
    """Expert-parallel group size (must divide the world size)."""
    moe: MoEParallelConfig = field(default_factory=MoEParallelConfig)
    """Expert-parallel MoE settings."""
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    """What the planner plans for."""
    storage_reservation: float = 0.15
    """Fraction of device memory the planner keeps free for dense parts and activations."""
    constraints: dict[str, TableConstraintConfig] = field(default_factory=dict)
    """Per-table planner constraints, keyed by table name; the key ``"*"`` applies to every table
    without its own entry."""
    manual: dict[str, ManualShardConfig] = field(default_factory=dict)
    """A hand-built plan, keyed by table name (every table must be listed); bypasses the planner."""
    plan_timeout_s: float = 600.0
    """Collective timeout while planning and sharding; a stuck rank fails instead of hanging."""
