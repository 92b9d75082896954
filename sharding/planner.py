"""Plan where the embedding tables go: TorchRec's planner, or a hand-built plan.

Every rank runs the (deterministic) planner itself instead of TorchRec's ``collective_plan``, which
plans on rank 0 and broadcasts: when rank 0's planner raises there, the other ranks wait in the
broadcast forever (seen with TorchRec 1.8). Planning locally, every rank fails with the same reason.
The same code plans for any topology from a laptop (``recscale plan``), with no process group.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    get_default_sharders,
    grid_shard,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recscale.configs.schema import ShardingConfig
from recscale.modules.embeddings import SEQUENCE_TABLE_SUFFIX, SparseArch
from recscale.sharding.plan import EmbeddingPlan, describe_plan
from recscale.sharding.topology import build_topology

# ShardingTypes the EBC sharder offers per device (TorchRec 1.8, embedding_types.py).
PLANNER_TYPES = {
    "cpu": {"data_parallel", "table_wise", "column_wise", "table_column_wise"},
    "cuda": {
        "data_parallel",
        "table_wise",
        "column_wise",
        "table_column_wise",
        "row_wise",
        "table_row_wise",
        "grid_shard",
    },
}


class _DataParallelSpecNoise(logging.Filter):
    """Drops TorchRec's 'Sharding spec not found' WARNING for data-parallel tables (noise to a user)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found for ")


logging.getLogger().addFilter(_DataParallelSpecNoise())


class PlanningError(ValueError):
    """The tables cannot be placed; the message carries the planner's reason."""


def sharders() -> list[ModuleSharder[nn.Module]]:
    """The sharders DMP uses (TorchRec's defaults: EBC, EC, ...)."""
    out: list[ModuleSharder[nn.Module]] = get_default_sharders()
    return out


def plan_embeddings(
    sparse: SparseArch,
    cfg: ShardingConfig,
    *,
    world_size: int,
    local_world_size: int,
    device: str,
    batch_size_per_rank: int,
    sparse_optimizer: str,
) -> tuple[ShardingPlan, EmbeddingPlan]:
    """Plan the sparse arch for ``world_size`` ranks of ``device``; no process group needed.

    Args:
        sparse: the sparse arch (tables on ``meta``).
        cfg: the ``sharding`` section (constraints, manual plan, topology).
        world_size: ranks to plan for.
        local_world_size: ranks per node of the running job.
        device: ``cpu`` or ``cuda``.
        batch_size_per_rank: examples per rank per step (the planner's cost model uses it).
        sparse_optimizer: the fused optimizer (its state counts towards memory).

    Raises:
        PlanningError: the tables do not fit, or the constraints leave no option.
    """
    shapes = {
        t.name: (t.num_embeddings, t.embedding_dim) for c in sparse.collections() for t in c.embedding_bag_configs()
    }
    if sparse.ec is not None:
        shapes.update({t.name: (t.num_embeddings, t.embedding_dim) for t in sparse.ec.embedding_configs()})
    if cfg.manual:
        plan = manual_plan(sparse, cfg, world_size=world_size, local_world_size=local_world_size, device=device)
        described = describe_plan(plan, shapes, world_size, device, sparse_optimizer, "manual")
        check_fused_columns(described)
        return plan, described

    allowed = PLANNER_TYPES[device]
    for name, c in cfg.constraints.items():
        name = "'*'" if name == "*" else name
        bad = [t for t in c.sharding_types if t not in allowed]
        if bad:
            raise PlanningError(
                f"sharding.constraints.{name}.sharding_types: {bad} cannot be planned on {device} "
                f"(the planner offers {sorted(allowed)} there); use a hand-built plan (sharding.manual) "
                f"for row-wise on CPU"
            )
    constraints = {
        table: ParameterConstraints(
            sharding_types=list(c.sharding_types) or None,
            compute_kernels=list(c.compute_kernels) or None,
            **({"pooling_factors": [c.pooling_factor]} if c.pooling_factor > 0 else {}),
        )
        for table in shapes
        for c in [cfg.constraints.get(config_table_name(table)) or cfg.constraints.get("*")]
        if c is not None
    }
    topology = build_topology(cfg.topology, world_size, local_world_size, device)
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size_per_rank,
        constraints=constraints,
        storage_reservation=FixedPercentageStorageReservation(percentage=cfg.storage_reservation),
        debug=False,
    )
    try:
        plan = planner.plan(sparse, sharders())
    except (PlannerError, RuntimeError) as err:
        raise PlanningError(
            f"the embedding planner could not place the tables on {world_size} x {device}: {err}"
        ) from None
    estimates: dict[str, list[float]] = {}
    for option in planner._best_plan or []:  # noqa: SLF001 - the planner exposes no public accessor
        estimates[option.name] = [s.perf.total if s.perf is not None else 0.0 for s in option.shards]
    summary: dict[str, Any] = {
        "num_proposals": planner._num_proposals,  # noqa: SLF001
        "num_plans": planner._num_plans,  # noqa: SLF001
        "batch_size_per_rank": batch_size_per_rank,
        "storage_reservation": cfg.storage_reservation,
        "hbm_gb_per_rank": cfg.topology.hbm_gb if device == "cuda" else 0.0,
        "ddr_gb_per_rank": cfg.topology.ddr_gb,
    }
    described = describe_plan(plan, shapes, world_size, device, sparse_optimizer, "planner", estimates, summary)
    check_fused_columns(described)
    return plan, described


def check_fused_columns(plan: EmbeddingPlan) -> None:
    """FBGEMM's fused kernels need every shard's column count divisible by 4; say so before sharding.

    Raises:
        PlanningError: naming the tables and what to change.
    """
    bad = sorted(
        {
            f"{t.table} ({s.sizes[1]} columns on rank {s.rank})"
            for t in plan.tables
            if t.compute_kernel != "dense"
            for s in t.shards
            if s.sizes[1] % 4
        }
    )
    if bad:
        raise PlanningError(
            "FBGEMM's fused embedding kernels need a multiple of 4 columns per shard: "
            + ", ".join(bad)
            + "; use embedding dims that are multiples of 4, or make these tables data_parallel "
            "(sharding.constraints.<table>.sharding_types: [data_parallel])"
        )


def manual_plan(
    sparse: SparseArch, cfg: ShardingConfig, *, world_size: int, local_world_size: int, device: str
) -> ShardingPlan:
    """A hand-built plan from ``sharding.manual`` (every table listed); how RW runs on CPU.

    Raises:
        PlanningError: a placement that TorchRec's generators cannot express.
    """
    plans = {
        name: _manual_module_plan(module, cfg, world_size, local_world_size, device)
        for name, module in (("ebc", sparse.ebc), ("mc_ebc", sparse.mc_ebc))
        if module is not None
    }
    if sparse.ec is not None:
        plans["ec"] = _manual_module_plan(sparse.ec, cfg, world_size, local_world_size, device)
    return ShardingPlan(plans)  # type: ignore[arg-type]


def config_table_name(table: str) -> str:
    """The config's name of a TorchRec table (the sequence copy ``<t>__seq`` of a shared table is ``t``)."""
    return table.removesuffix(SEQUENCE_TABLE_SUFFIX)


def _manual_module_plan(
    module: EmbeddingBagCollection | EmbeddingCollection,
    cfg: ShardingConfig,
    world_size: int,
    local_world_size: int,
    device: str,
) -> Any:
    """One collection's part of a hand-built plan."""
    configs = (
        module.embedding_bag_configs() if isinstance(module, EmbeddingBagCollection) else module.embedding_configs()
    )
    names = [t.name for t in configs]
    per_table = {}
    for name in names:
        m = cfg.manual[config_table_name(name)]
        where = f"sharding.manual.{config_table_name(name)}"
        if m.type == "table_wise":
            per_table[name] = table_wise(rank=m.ranks[0] if m.ranks else 0)
        elif m.type == "column_wise":
            per_table[name] = column_wise(ranks=m.ranks or list(range(world_size)))
        elif m.type in ("data_parallel", "row_wise", "table_row_wise", "grid_shard"):
            if m.ranks and sorted(m.ranks) != list(range(world_size)):
                raise PlanningError(f"{where}.ranks: {m.type} uses every rank; leave ranks empty")
            per_table[name] = {
                "data_parallel": data_parallel,
                "row_wise": row_wise,
                "table_row_wise": lambda: table_row_wise(host_index=0),
                "grid_shard": lambda: grid_shard(host_indexes=[0]),
            }[m.type]()
        else:
            raise PlanningError(
                f"{where}.type: {m.type!r} has no hand-built form; use the planner (sharding.constraints)"
            )
    try:
        module_plan = construct_module_sharding_plan(
            module,
            per_param_sharding=per_table,
            local_size=local_world_size,
            world_size=world_size,
            device_type=device,
        )
    except (AssertionError, ValueError, RuntimeError) as err:
        raise PlanningError(f"sharding.manual: TorchRec rejected the hand-built plan: {err}") from None
    return module_plan
