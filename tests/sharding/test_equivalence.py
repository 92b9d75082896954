"""Sharded == unsharded: forward and one training step, for every sharding type on CPU/gloo.

The reference is the same model with full tables on one process, trained on the *global* mean
loss over all ranks' batches (TorchRec divides sparse gradients by the world size and DDP averages
dense ones, so the sharded step is a step on the global mean loss).
"""

from __future__ import annotations

import pytest
import torch

from recscale.configs.schema import ManualShardConfig, TableConstraintConfig
from recscale.modules.build import build_model
from recscale.sharding.apply import parallelize
from recscale.sharding.process_group import init_distributed
from tests.batches import random_batch, tiny_config
from tests.distributed import run_distributed

pytestmark = pytest.mark.distributed

LR = 0.1


def _copy_into_shards(sharded_sd: dict, full_sd: dict) -> None:
    with torch.no_grad():
        for name, t in sharded_sd.items():
            full = full_sd[name]
            if hasattr(t, "local_shards"):
                for shard in t.local_shards():
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc])
            else:
                t.copy_(full)


def _max_diff(sharded_sd: dict, full_sd: dict) -> float:
    worst = 0.0
    for name, t in sharded_sd.items():
        full = full_sd[name]
        if hasattr(t, "local_shards"):
            for shard in t.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                worst = max(worst, float((shard.tensor - full[r0 : r0 + nr, c0 : c0 + nc]).abs().max()))
        else:
            worst = max(worst, float((t - full).abs().max()))
    return worst


def parallel_fp32(cfg, info, per_rank: int):
    """``cfg``'s model built on CPU and parallelized for ``per_rank`` examples per rank, fp32, no auxiliary loss."""
    return parallelize(
        build_model(cfg, dense_device="cpu"),
        cfg.sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=per_rank,
        total_steps=10,
        precision="fp32",
        aux_loss_weight=0.0,
    )


def _equivalence(rank: int, world: int, sharding_kind: str, sharding_type: str, sections: dict | None = None) -> dict:
    cfg = tiny_config(**(sections or {}))
    tables = [t.name for t in cfg.embeddings.tables]
    if sharding_kind == "planner":
        cfg.sharding.constraints = {t: TableConstraintConfig(sharding_types=[sharding_type]) for t in tables}
    else:
        cfg.sharding.manual = {t: ManualShardConfig(type=sharding_type) for t in tables}
    info = init_distributed("cpu")
    per_rank = cfg.trainer.batch_size // world

    reference = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    ref_model = _reference_model(reference)
    parallel = parallel_fp32(cfg, info, per_rank)
    _copy_into_shards(parallel.sparse.state_dict(), reference.sparse.state_dict())
    parallel.dense.inner.load_state_dict(reference.dense.state_dict())
    types = {t.table: t.sharding_type for t in parallel.plan.tables}

    batches = [random_batch(cfg, per_rank, seed=100 + r) for r in range(world)]
    loss, (_, logits, *_rest) = parallel.model(batches[rank])
    _, (_, ref_logits, *_rest2) = ref_model(batches[rank])
    forward_diff = float((logits - ref_logits).abs().max())

    parallel.updater.zero_grad()
    parallel.updater.backward(loss)
    parallel.updater.step()
    ref_loss = sum(ref_model(b)[0] for b in batches) / world
    ref_loss.backward()
    with torch.no_grad():
        for p in ref_model.parameters():
            p -= LR * p.grad
    sparse_diff = _max_diff(parallel.sparse.state_dict(), reference.sparse.state_dict())
    dense_diff = _max_diff(parallel.dense.inner.state_dict(), reference.dense.state_dict())
    return {"types": types, "forward": forward_diff, "sparse_after_step": sparse_diff, "dense_after_step": dense_diff}


def _reference_model(built):
    from recscale.modules.model import RecModel

    return RecModel(sparse=built.sparse, dense=built.dense)


CASES = [
    ("planner", "table_wise"),
    ("planner", "column_wise"),
    ("planner", "table_column_wise"),
    ("planner", "data_parallel"),
    ("manual", "row_wise"),
    ("manual", "table_row_wise"),
    ("manual", "grid_shard"),
]


@pytest.mark.parametrize("kind,sharding_type", CASES, ids=[f"{k}-{t}" for k, t in CASES])
def test_sharded_equals_unsharded(kind, sharding_type):
    results = run_distributed(_equivalence, 2, kind, sharding_type)
    for r in results:
        assert set(r["types"].values()) == {sharding_type}
        assert r["forward"] < 1e-6, r
        assert r["sparse_after_step"] < 1e-6, r
        assert r["dense_after_step"] < 1e-6, r


TWO_TASKS = {
    "data": {
        "features": {
            "labels": ["click", "buy"],
            "dense": ["d0", "d1", "d2"],
            "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)],
        }
    }
}


@pytest.mark.parametrize("structure", ["mmoe", "ple"])
def test_multitask_layers_shard_like_any_dense_arch(structure):
    sections = {
        **TWO_TASKS,
        "model": {
            "arch": "dcnv2",
            "over_arch": [16],
            "multitask": {"structure": structure, "num_levels": 2, "expert_widths": [8], "tower": [4]},
        },
    }
    results = run_distributed(_equivalence, 2, "planner", "table_wise", sections)
    for r in results:
        assert r["forward"] < 1e-6, r
        assert r["sparse_after_step"] < 1e-6, r
        assert r["dense_after_step"] < 1e-6, r
