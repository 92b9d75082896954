"""The TorchRec + dense-backend hybrid: pipelined == plain loop, DeepSpeed ZeRO 0/1/2 == DDP."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recscale.modules.build import build_model
from recscale.sharding.apply import parallelize
from recscale.sharding.process_group import init_distributed
from recscale.trainer.pipeline import HybridTrainPipeline, PhaseTimer, PlainStepper
from tests.batches import random_batch, tiny_config
from tests.distributed import run_distributed

pytestmark = pytest.mark.distributed

STEPS = 6


def _loss_curve(rank: int, world: int, dense: str, zero: int, pipelined: bool) -> list[float]:
    cfg = tiny_config(
        optimizer={"dense": {"name": "adam", "lr": 0.01}, "sparse": {"name": "rowwise_adagrad", "lr": 0.05}}
    )
    cfg.sharding.dense = dense
    cfg.sharding.zero_stage = zero
    info = init_distributed("cpu")
    per_rank = cfg.trainer.batch_size // world
    parallel = parallelize(
        build_model(cfg),
        cfg.sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=per_rank,
        total_steps=STEPS,
        precision="fp32",
        aux_loss_weight=0.0,
    )
    batches = iter([random_batch(cfg, per_rank, seed=1000 * rank + i) for i in range(STEPS)])
    cls = HybridTrainPipeline if pipelined else PlainStepper
    stepper = cls(parallel.model, parallel.updater, info.device, PhaseTimer(info.device))
    losses = []
    for _ in range(STEPS):
        out = stepper.step(batches)
        t = out[0].clone()
        dist.all_reduce(t)
        losses.append(float(t) / world)
    return losses


def test_pipelined_equals_plain_loop():
    plain = run_distributed(_loss_curve, 2, "ddp", 0, False)[0]
    piped = run_distributed(_loss_curve, 2, "ddp", 0, True)[0]
    assert piped == plain
    assert plain[-1] < plain[0]  # it trains


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_deepspeed_zero_matches_ddp(zero):
    ddp = run_distributed(_loss_curve, 2, "ddp", 0, True)[0]
    ds = run_distributed(_loss_curve, 2, "deepspeed", zero, True)[0]
    assert torch.allclose(torch.tensor(ds), torch.tensor(ddp), rtol=1e-5, atol=1e-6), (ds, ddp)


def _bf16_curve(rank: int, world: int, dense: str) -> list[float]:
    cfg = tiny_config(
        optimizer={"dense": {"name": "adam", "lr": 0.01}, "sparse": {"name": "rowwise_adagrad", "lr": 0.05}}
    )
    cfg.sharding.dense = dense
    info = init_distributed("cpu")
    per_rank = cfg.trainer.batch_size // world
    curves = []
    for precision in ("fp32", "bf16"):
        parallel = parallelize(
            build_model(cfg),
            cfg.sharding,
            cfg.optimizer,
            info=info,
            batch_size_per_rank=per_rank,
            total_steps=STEPS,
            precision=precision,
            aux_loss_weight=0.0,
        )
        batches = iter([random_batch(cfg, per_rank, seed=1000 * rank + i) for i in range(STEPS)])
        stepper = HybridTrainPipeline(parallel.model, parallel.updater, info.device, PhaseTimer(info.device))
        curve = []
        for _ in range(STEPS):
            out = stepper.step(batches)
            curve.append(float(out[0]))
        curves.append(curve)
        if precision == "bf16":
            dtypes = {p.dtype for p in parallel.dense.module.parameters()}
            curves.append(sorted(str(d) for d in dtypes))
    return curves


@pytest.mark.parametrize("dense", ["ddp", "deepspeed"])
def test_bf16_trains_close_to_fp32(dense):
    fp32, bf16, dtypes = run_distributed(_bf16_curve, 2, dense)[0]
    # DDP keeps fp32 weights and autocasts; DeepSpeed keeps bf16 weights (fp32 master copy in the optimizer)
    assert dtypes == (["torch.float32"] if dense == "ddp" else ["torch.bfloat16"])
    assert bf16 != fp32  # bf16 really ran
    assert torch.allclose(torch.tensor(bf16), torch.tensor(fp32), atol=2e-2), (bf16, fp32)
