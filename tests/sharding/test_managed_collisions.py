"""Managed-collision tables sharded on 2 ranks == the same model unsharded on the global batch.

The reference runs each step on the concatenation of both ranks' batches: its remapper profiles the same
ids (an eviction round does not depend on their order), its tables get the same admissions, evictions and
zeroed rows, and its loss is the mean of the ranks' losses.
"""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs.schema import TableConstraintConfig
from recscale.data.batch import Batch
from recscale.modules.build import build_model
from recscale.sharding.process_group import init_distributed
from recscale.trainer.pipeline import HybridTrainPipeline, PhaseTimer, PlainStepper
from tests.batches import random_batch, tiny_config
from tests.distributed import run_distributed
from tests.sharding.test_equivalence import _copy_into_shards, _max_diff, parallel_fp32

pytestmark = pytest.mark.distributed

LR = 0.1
STEPS = 4
MANAGED = {
    "embeddings": {
        "dim": 8,
        "tables": [
            {"name": "t0", "num_embeddings": 12, "collisions": "managed"},
            {"name": "t1", "num_embeddings": 40},
            {"name": "t2", "num_embeddings": 10, "collisions": "managed", "managed": {"eviction": "lru"}},
            {"name": "t3", "num_embeddings": 16},
        ],
    }
}
RAW = {"f0": 200, "f2": 60}
"""Features of managed tables -> how many distinct raw ids they draw from (more than the table's slots)."""


def raw_batch(cfg, size: int, seed: int) -> Batch:
    """``random_batch`` with the managed features' ids replaced by skewed raw 64-bit ids."""
    batch = random_batch(cfg, size, seed)
    g = torch.Generator().manual_seed(seed + 7)
    pieces = []
    for key, jt in batch.sparse.to_dict().items():
        values = jt.values()
        if key in RAW:
            rank = (torch.rand(values.numel(), generator=g) ** 2 * RAW[key]).long()
            values = rank * 1_000_003 + 2**40  # large, sparse raw ids
        pieces.append(values)
    batch.sparse = KeyedJaggedTensor(
        keys=batch.sparse.keys(), values=torch.cat(pieces), lengths=batch.sparse.lengths(), stride=size
    )
    return batch


def concat(batches: list[Batch]) -> Batch:
    """The global batch: every rank's rows, rank 0 first."""
    dicts = [b.sparse.to_dict() for b in batches]
    keys = batches[0].sparse.keys()
    values = torch.cat([torch.cat([d[k].values() for d in dicts]) for k in keys])
    lengths = torch.cat([torch.cat([d[k].lengths() for d in dicts]) for k in keys])
    size = sum(b.batch_size for b in batches)
    return Batch(
        dense=torch.cat([b.dense for b in batches]),
        sparse=KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=size),
        labels=torch.cat([b.labels for b in batches]),
        weights=torch.cat([b.weights for b in batches]),
    )


def _managed_equivalence(rank: int, world: int, sharding_type: str) -> dict:
    cfg = tiny_config(**MANAGED)
    cfg.sharding.constraints = {"*": TableConstraintConfig(sharding_types=[sharding_type])}
    info = init_distributed("cpu")
    per_rank = cfg.trainer.batch_size // world
    reference = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    ref_model = reference.rec_model()
    parallel = parallel_fp32(cfg, info, per_rank)
    _copy_into_shards(parallel.sparse.state_dict(), reference.sparse.state_dict())
    parallel.dense.inner.load_state_dict(reference.dense.state_dict())
    losses, ref_losses, evicted = [], [], []
    ref_model.managed_ids.on_evict = _counting(ref_model.managed_ids.on_evict, evicted)
    for step in range(STEPS):
        batches = [raw_batch(cfg, per_rank, seed=100 * step + r) for r in range(world)]
        loss, _ = parallel.model(batches[rank])
        parallel.updater.zero_grad()
        parallel.updater.backward(loss)
        parallel.updater.step()
        ref_model.zero_grad()
        ref_loss, _ = ref_model(concat(batches))
        ref_loss.backward()
        with torch.no_grad():
            for p in ref_model.parameters():
                p -= LR * p.grad
        losses.append(float(loss.detach()))
        ref_losses.append(float(ref_loss))
    mine, ref = parallel.model.managed_ids, ref_model.managed_ids
    same_maps = all(
        torch.equal(a, b) for t in ("t0", "t2") for a, b in zip(mine.slot_map(t), ref.slot_map(t), strict=True)
    )
    return {
        "types": {t.table: t.sharding_type for t in parallel.plan.tables},
        "losses": losses,
        "ref_losses": ref_losses,
        "sparse_diff": _max_diff(parallel.sparse.state_dict(), reference.sparse.state_dict()),
        "dense_diff": _max_diff(parallel.dense.inner.state_dict(), reference.dense.state_dict()),
        "same_maps": same_maps,
        "evicted": sum(evicted),
        "slots_used": {t: len(mine.slot_map(t)[0]) for t in ("t0", "t2")},
    }


def _counting(inner, out: list):
    def call(table, slots):
        out.append(slots.numel())
        inner(table, slots)

    return call


SHARDING_TYPES = ("table_wise", "column_wise", "data_parallel")


def _every_case(rank: int, world: int) -> dict:
    """Every case of this file in one pair of processes (a spawn costs seconds; the cases share nothing)."""
    out = {t: _managed_equivalence(rank, world, t) for t in SHARDING_TYPES}
    return {**out, "reset": _reset_worker(rank, world), "pipeline": _pipeline_worker(rank, world)}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return run_distributed(_every_case, 2)


@pytest.mark.parametrize("sharding_type", SHARDING_TYPES)
def test_managed_tables_sharded_equal_unsharded(cases, sharding_type):
    results = [c[sharding_type] for c in cases]
    for r in results:
        assert set(r["types"].values()) == {sharding_type}
        assert r["same_maps"], r
        assert r["evicted"] > 0, r  # rounds handed out slots and rows were reset
        assert r["slots_used"] == {"t0": 11, "t2": 9}, r  # every slot but the shared miss slot is taken
        assert r["sparse_diff"] < 1e-5, r
        assert r["dense_diff"] < 1e-5, r
    mean = [(a + b) / 2 for a, b in zip(results[0]["losses"], results[1]["losses"], strict=True)]
    for got, want in zip(mean, results[0]["ref_losses"], strict=True):
        assert abs(got - want) < 1e-5, results[0]


def _reset_worker(rank: int, world: int) -> dict:
    cfg = tiny_config(
        **MANAGED, optimizer={"dense": {"name": "sgd", "lr": 0.1}, "sparse": {"name": "rowwise_adagrad", "lr": 0.1}}
    )
    cfg.sharding.constraints = {"*": TableConstraintConfig(sharding_types=["table_wise"])}
    info = init_distributed("cpu")
    parallel = parallel_fp32(cfg, info, 8)
    parallel.model.managed_ids.on_evict = None  # rows keep their values, so the reset below is what zeroes them
    for step in range(2):
        loss, _ = parallel.model(raw_batch(cfg, 8, seed=10 * step + rank))
        parallel.updater.zero_grad()
        parallel.updater.backward(loss)
        parallel.updater.step()
    from recscale.modules.managed_rows import RowReset

    RowReset(parallel.sparse)("t0", torch.tensor([0, 3, 5]))
    out = {}
    state = parallel.sparse.fused_optimizer.state_dict()["state"]
    for key, weight in parallel.sparse.state_dict().items():
        if not key.endswith("embedding_bags.t0.weight"):
            continue
        for shard in weight.local_shards():
            out["weight"] = shard.tensor.abs().sum(dim=1).tolist()
        for name, value in state.get(key, {}).items():
            for shard in value.local_shards():
                out[name] = shard.tensor.reshape(shard.tensor.shape[0], -1).abs().sum(dim=1).tolist()
    return out


def test_row_reset_zeroes_rows_and_optimizer_state(cases):
    """Rows handed to new ids start from zero, and so does their row-wise Adagrad momentum."""
    held = [c["reset"] for c in cases if c["reset"]]
    assert len(held) == 1  # table-wise: one rank holds t0
    rows = held[0]
    assert set(rows) == {"weight", "t0.momentum1"}, rows.keys()
    for values in rows.values():
        assert [values[i] for i in (0, 3, 5)] == [0.0, 0.0, 0.0]
        assert sum(v > 0 for i, v in enumerate(values) if i not in (0, 3, 5)) > 0  # the others were trained
    assert sum(v > 0 for v in rows["weight"]) >= 8


def _pipeline_worker(rank: int, world: int) -> dict:
    """Loss curves of TorchRec's pipeline and the plain loop, and which sharded modules the pipeline took."""
    cfg = tiny_config(**MANAGED)
    cfg.sharding.constraints = {"*": TableConstraintConfig(sharding_types=["table_wise"])}
    info = init_distributed("cpu")
    curves = {}
    for cls in (PlainStepper, HybridTrainPipeline):
        parallel = parallel_fp32(cfg, info, 8)
        batches = iter([raw_batch(cfg, 8, seed=10 * step + rank) for step in range(STEPS)])
        stepper = cls(parallel.model, parallel.updater, info.device, PhaseTimer(info.device))
        curves[cls.__name__] = [float(stepper.step(batches)[0]) for _ in range(STEPS)]
    names = {id(m): name for name, m in parallel.model.named_modules()}
    pipelined = sorted(names.get(id(m), type(m).__name__) for m in stepper._pipelined_modules)
    return {"curves": curves, "pipelined": pipelined}


def test_other_tables_stay_pipelined_beside_a_managed_one(cases):
    """TorchRec's pipeline starts the plain tables' input all-to-all a batch early; the managed tables'
    collection, whose input the model computes, runs in the step. The pipelined loop equals the plain one."""
    for c in cases:
        result = c["pipeline"]
        assert [name.rsplit(".", 1)[-1] for name in result["pipelined"]] == ["ebc"], result["pipelined"]
        assert result["curves"]["HybridTrainPipeline"] == result["curves"]["PlainStepper"], result["curves"]
