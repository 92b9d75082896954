"""Planning: dry runs for big clusters without GPUs, clear failures, no rank left hanging."""

from __future__ import annotations

import pytest

from recscale.configs import load_config
from recscale.configs.schema import ManualShardConfig, TableConstraintConfig
from recscale.modules.build import build_model
from recscale.sharding.apply import parallelize
from recscale.sharding.plan import EmbeddingPlan
from recscale.sharding.planner import PlanningError, plan_embeddings
from recscale.sharding.process_group import init_distributed
from tests.batches import tiny_config
from tests.distributed import run_distributed


def plan_for(cfg, world, device="cuda", per_node=8):
    built = build_model(cfg, dense_device="meta")
    return plan_embeddings(
        built.sparse,
        cfg.sharding,
        world_size=world,
        local_world_size=per_node,
        device=device,
        batch_size_per_rank=512,
        sparse_optimizer="rowwise_adagrad",
    )


def test_plans_a_64_gpu_cluster_from_a_cpu_machine(tmp_path):
    cfg = load_config("quickstart", ["embeddings.tables.0.num_embeddings=50000000"])
    _, plan = plan_for(cfg, 64)
    assert plan.world_size == 64 and plan.device == "cuda"
    assert {t.table for t in plan.tables} == {t.name for t in cfg.embeddings.tables}
    # every row of every table is placed exactly once (model-parallel) or on every rank (data-parallel)
    for t in plan.tables:
        rows = sum(s.sizes[0] * s.sizes[1] for s in t.shards) // t.dim
        assert rows == t.rows * (plan.world_size if t.sharding_type == "data_parallel" else 1)
    big = next(t for t in plan.tables if t.table == "t_user")
    assert big.sharding_type != "data_parallel"  # 50M x 16 does not belong on every GPU
    assert plan.est_step_ms() > 0
    text = plan.format_table()
    assert "t_user" in text and "64 x cuda" in text and "fullest ranks" in text
    plan.save(tmp_path / "plan.json")
    assert EmbeddingPlan.load(tmp_path / "plan.json").to_json() == plan.to_json()


def test_a_model_that_does_not_fit_fails_with_the_planners_reason():
    cfg = load_config("quickstart", ["embeddings.tables.0.num_embeddings=40000000000", "sharding.topology.ddr_gb=1"])
    with pytest.raises(PlanningError, match=r"could not place the tables on 8 x cuda.*(storage|Storage)"):
        plan_for(cfg, 8)


def test_row_wise_through_the_planner_on_cpu_points_to_the_manual_plan():
    cfg = tiny_config()
    cfg.sharding.constraints = {"t0": TableConstraintConfig(sharding_types=["row_wise"])}
    with pytest.raises(PlanningError, match="use a hand-built plan"):
        plan_for(cfg, 2, device="cpu", per_node=2)


def test_manual_plan_places_tables_where_asked():
    cfg = tiny_config()
    cfg.sharding.manual = {
        "t0": ManualShardConfig(type="row_wise"),
        "t1": ManualShardConfig(type="table_wise", ranks=[1]),
        "t2": ManualShardConfig(type="column_wise", ranks=[0, 1]),
        "t3": ManualShardConfig(type="data_parallel"),
    }
    _, plan = plan_for(cfg, 2, device="cpu", per_node=2)
    by_name = {t.table: t for t in plan.tables}
    assert by_name["t0"].ranks == [0, 1] and by_name["t0"].sharding_type == "row_wise"
    assert by_name["t1"].ranks == [1]
    assert [(s.rank, s.offsets, s.sizes) for s in by_name["t2"].shards] == [(0, [0, 0], [24, 4]), (1, [0, 4], [24, 4])]
    assert by_name["t3"].sharding_type == "data_parallel" and by_name["t3"].ranks == [0, 1]


def _plan_on_every_rank(rank, world):
    cfg = tiny_config()
    cfg.sharding.topology.ddr_gb = 1e-6  # nothing fits: every rank's planner fails
    info = init_distributed("cpu")
    try:
        parallelize(
            build_model(cfg),
            cfg.sharding,
            cfg.optimizer,
            info=info,
            batch_size_per_rank=8,
            total_steps=1,
            precision="fp32",
            aux_loss_weight=0.0,
        )
    except PlanningError as err:
        return str(err)
    return "no error"


@pytest.mark.distributed
def test_planning_failure_reaches_every_rank_without_a_hang():
    messages = run_distributed(_plan_on_every_rank, 2, timeout_s=120)
    assert all("could not place the tables" in m for m in messages), messages
