"""Sequence plumbing through TorchRec: fx tracing of ``RecModel`` and the sharded EC in the train pipeline."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from recscale.modules.build import build_model
from recscale.modules.model import RecModel
from tests.distributed import run_distributed
from tests.modules.seq_helpers import seq_batch, seq_config

KUNLUN = {"kunlun": {"dim": 16, "num_layers": 2, "window": 3, "rope": "time"}}


def test_recmodel_traces_with_torchrec_tracer_and_dense_leaf() -> None:
    from torchrec.distributed.train_pipeline.tracing import Tracer

    cfg = seq_config(model=KUNLUN)
    built = build_model(cfg, sparse_device="cpu")
    model = RecModel(built.sparse, built.dense, uses_sequences=True, uses_timestamps=True)
    graph = Tracer(leaf_modules=["dense", "sparse.padder"]).trace(model)
    targets = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    assert {"dense", "sparse.padder"} <= targets
    getattrs = {n.args[1] for n in graph.nodes if n.op == "call_function" and n.target is getattr}
    assert {"sparse", "sequences", "sequence_timestamps", "domain"} <= getattrs
    # the whole forward (EC lookups and padding included) also traces when nothing is a leaf but the dense arch
    gm = torch.fx.GraphModule(model, Tracer(leaf_modules=["dense"]).trace(model))
    batch = seq_batch(cfg, 6, seed=0)
    assert torch.allclose(gm(batch)[0], model(batch)[0])


def test_dlrm_path_unchanged_without_sequences() -> None:
    cfg = seq_config(arch="dcnv2", model={"dense_arch": [], "dcnv2": {"num_cross_layers": 1, "low_rank": 4}})
    built = build_model(cfg, sparse_device="cpu")
    assert built.sparse.ec is None
    model = RecModel(built.sparse, built.dense)
    loss, _ = model(seq_batch(cfg, 4, seed=1))
    assert loss.ndim == 0


def _pipeline(rank: int, world: int) -> dict:
    import torch.distributed as dist
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    cfg = seq_config(model=KUNLUN)
    built = build_model(cfg)  # tables on meta
    names = ["t_user", "t_item", "t_item__seq", "t_cat"]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"),
        constraints={n: ParameterConstraints(sharding_types=["table_wise"]) for n in names},
    )
    plan = planner.collective_plan(built.sparse, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(built.sparse, device=torch.device("cpu"), plan=plan)
    model = RecModel(dmp, built.dense, uses_sequences=True, uses_timestamps=True).eval()
    batches = [seq_batch(cfg, 4, seed=10 * rank + i) for i in range(3)]
    with torch.no_grad():  # before the pipeline rewrites the sharded modules' forwards
        direct = [float(model(b)[0]) for b in batches]
    pipe = TrainPipelineSparseDist(
        model, torch.optim.SGD(built.dense.parameters(), lr=0.0), torch.device("cpu"), execute_all_batches=True
    )
    piped, it = [], iter(batches)
    while True:
        try:
            piped.append(float(pipe.progress(it)[0]))
        except StopIteration:
            break
    return {
        "pipelined": sorted(type(m).__name__ for m in pipe._pipelined_modules),
        "plan": sorted(plan.plan),
        "piped": piped,
        "direct": direct,
    }


@pytest.mark.distributed
def test_sharded_ec_is_pipelined_and_matches_plain_forward() -> None:
    for result in run_distributed(_pipeline, 2):
        assert result["plan"] == ["ebc", "ec"]
        assert result["pipelined"] == ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"]
        assert result["piped"] == pytest.approx(result["direct"], abs=1e-6)
