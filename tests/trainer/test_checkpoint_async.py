"""Asynchronous checkpoints of a real sharded model (tables and dense part), without the training loop.

A small harness trains a 2-rank TorchRec + DDP model step by step and saves through the run's
``CheckpointManager``, synchronously into one run directory and asynchronously into another, then
keeps training while the asynchronous files are written. The two checkpoints hold the same shard
files byte for byte, and a model resumed from the asynchronous one continues exactly as the
uninterrupted run did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from recscale.configs import JobConfig
from recscale.configs.schema import CheckpointConfig
from recscale.modules.build import build_model
from recscale.sharding.apply import ParallelModel, parallelize
from recscale.sharding.checkpoint import read_manifest, rng_state, set_rng_state
from recscale.sharding.process_group import init_distributed
from recscale.trainer.checkpoint import CheckpointManager
from tests.batches import random_batch, tiny_config
from tests.distributed import run_distributed

pytestmark = pytest.mark.distributed

BATCH = 32


def _config() -> JobConfig:
    return tiny_config(
        optimizer={"dense": {"name": "adam", "lr": 0.01}, "sparse": {"name": "rowwise_adagrad", "lr": 0.05}},
        trainer={"batch_size": BATCH, "device": "cpu"},
    )


def _parallel(cfg: JobConfig) -> ParallelModel:
    info = init_distributed("cpu")
    torch.manual_seed(cfg.seed)
    return parallelize(
        build_model(cfg, dense_device=info.device),
        cfg.sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=BATCH // info.world_size,
        total_steps=10,
        precision="fp32",
        aux_loss_weight=0.0,
    )


def _step(parallel: ParallelModel, cfg: JobConfig, step: int, rank: int) -> float:
    batch = random_batch(cfg, BATCH // 2, seed=100 * step + rank)
    parallel.updater.zero_grad()
    loss, _ = parallel.model(batch)
    parallel.updater.backward(loss)
    parallel.updater.step()
    return float(loss.detach())


def _harness(rank: int, world: int, run_dir: str) -> dict[str, Any]:
    cfg = _config()
    parallel = _parallel(cfg)
    for step in (1, 2):
        _step(parallel, cfg, step, rank)
    state = {"rng": rng_state(), "note": "after step 2"}
    sync = CheckpointManager(Path(run_dir) / "sync", CheckpointConfig(), rank, world)
    sync.save(2, parallel, state)
    asynchronous = CheckpointManager(Path(run_dir) / "async", CheckpointConfig(async_save=True), rank, world)
    path = asynchronous.save(2, parallel, state)
    uninterrupted = [_step(parallel, cfg, step, rank) for step in (3, 4)]  # while the files are written
    asynchronous.close()
    resumed_model = _parallel(cfg)
    loaded = CheckpointManager(Path(run_dir) / "async", CheckpointConfig(), rank, world).load(path, resumed_model)
    set_rng_state(loaded["rng"])
    resumed = [_step(resumed_model, cfg, step, rank) for step in (3, 4)]
    return {"uninterrupted": uninterrupted, "resumed": resumed, "note": loaded["note"], "step": loaded["step"]}


def test_async_save_of_tables_and_dense_equals_the_sync_save_and_resumes_exactly(tmp_path):
    results = run_distributed(_harness, 2, str(tmp_path))
    for r in results:
        assert (r["note"], r["step"]) == ("after step 2", 2)
        assert r["resumed"] == r["uninterrupted"]
    sync, asynchronous = (
        read_manifest(tmp_path / kind / "checkpoints" / "step_00000002")["files"] for kind in ("sync", "async")
    )
    assert sorted(sync) == sorted(asynchronous) and "__1_0.distcp" in sync
    for name in sync:
        if name != ".metadata":  # the index names its own directory
            assert sync[name]["sha256"] == asynchronous[name]["sha256"], name
