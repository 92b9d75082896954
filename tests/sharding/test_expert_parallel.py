"""HiLoMoE under DeepSpeed expert parallelism == the reference on one rank.

The reference is the unconverted model trained on the *global* batch (both ranks' halves); the
expert-parallel model runs at ep_size 2 on 2 gloo ranks under ZeRO 0/1/2, with global balance
statistics, so its mean loss, its auxiliary losses and its averaged gradients are those of the
reference (up to float summation order).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import deepspeed
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.moe.sharded_moe import MOELayer
from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from deepspeed.utils import safe_get_full_grad

from recscale.configs.schema import DenseOptimizerConfig, HiLoMoEConfig, MoEParallelConfig, StageConfig
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.hilomoe import (
    HiLoMoELinear,
    MoEBackend,
    apply_training_stage,
    build_moe_dense,
    moe_blocks,
    role_param_groups,
    stage_group_scales,
)
from recscale.modules.host_reads import deliberate_reads
from recscale.sharding.checkpoint import load_parts, save_parts
from recscale.sharding.dense_parallel import DeepSpeedDense
from recscale.sharding.expert_parallel import DeepSpeedHiLoMoELinear, apply_expert_parallel
from recscale.sharding.hilomoe_ep import GateRoutes, HiLoMoEGate, RankOneExperts, route_locations
from tests.distributed import run_distributed
from tests.modules.test_mowe_routing import CountHostReads

GLOBAL_BATCH, NUM_DENSE, POOLED = 16, 3, 12
LR = 0.01


def _model(routing: str = "topk") -> torch.nn.Module:
    torch.manual_seed(0)
    inner = DCNv2Dense(NUM_DENSE, POOLED, bottom=[], deep=[16, 8], num_cross_layers=1, low_rank=4)
    cfg = HiLoMoEConfig(
        num_experts=4,
        num_layers=2,
        routing=routing,
        top_k=2,
        expert_init_std=0.1,
        load_balance_weight=0.05,
        z_loss_weight=0.01,
        diversity_weight=0.02,
    )
    return build_moe_dense(inner, cfg, ["deep"])


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (
            torch.randn(GLOBAL_BATCH, NUM_DENSE, generator=g),
            torch.randn(GLOBAL_BATCH, POOLED, generator=g),
            (torch.rand(GLOBAL_BATCH, 1, generator=g) < 0.4).float(),
        )
        for _ in range(steps)
    ]


def _loss(out: tuple, labels: torch.Tensor) -> torch.Tensor:
    logits, aux, _ = out
    return F.binary_cross_entropy_with_logits(logits, labels) + aux


def _ep_grad_diff(ref: torch.nn.Module, ep: torch.nn.Module, rank: int, zero: int, dispatch: str) -> float:
    """Largest |grad difference| over every parameter of the EP model (experts mapped to global ids)."""
    worst = 0.0
    blocks = dict(moe_blocks(ref))
    ref_params = dict(ref.named_parameters())
    for name, p in ep.named_parameters():
        grad = p.grad if zero == 0 else safe_get_full_grad(p)
        if ".moes." in name:  # <block>.moes.<m>.deepspeed_moe.experts.deepspeed_experts.<local>.<v|u>
            block_path, _, rest = name.partition(".moes.")
            block = blocks[block_path]
            parts = rest.split(".")
            moe_index, local, which = int(parts[0]), int(parts[-2]), parts[-1]
            per_dispatch = block.num_experts * (block.num_layers if dispatch == "one_round" else 1)
            global_id = moe_index * per_dispatch + rank * (per_dispatch // 2) + local
            full = ref_params[f"{block_path}.experts_{which}"].grad
            expected = full.reshape(block.num_layers * block.num_experts, -1)[global_id]
        else:
            expected = ref_params[name].grad
        worst = max(worst, float((grad - expected).abs().max()))
    return worst


def _parity(rank: int, world: int, dispatch: str, stages: list[int], steps: int, exchange: str = "dropless") -> dict:
    batches = _batches(steps)
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    results: dict = {}
    for zero in stages:
        ref = _model()
        ep_model = apply_expert_parallel(copy.deepcopy(ref), 2, MoEParallelConfig(dispatch=dispatch, exchange=exchange))
        backend = DeepSpeedDense(
            ep_model, DenseOptimizerConfig(name="adam", lr=LR), steps, zero, GLOBAL_BATCH // world, False
        )
        ref_opt = torch.optim.Adam(ref.parameters(), lr=LR)
        losses, ref_losses = [], []
        for step, (dense, pooled, labels) in enumerate(batches):
            ref_out = ref(dense, pooled)
            ref_loss = _loss(ref_out, labels)
            ref_opt.zero_grad()
            ref_loss.backward()
            out = backend.module(dense[rows], pooled[rows])
            loss = _loss(out, labels[rows])
            backend.backward(loss)
            if step == 0:
                logits_diff = float((out[0] - ref_out[0][rows]).detach().abs().max())
                aux_mean = out[1].detach().clone()
                dist.all_reduce(aux_mean)
                results[f"z{zero}_logits"] = logits_diff
                results[f"z{zero}_aux"] = abs(float(aux_mean) / world - float(ref_out[1]))
                results[f"z{zero}_lb"] = abs(float(out[2]["moe/load_balance"] - ref_out[2]["moe/load_balance"]))
                results[f"z{zero}_grads"] = _ep_grad_diff(ref, ep_model, rank, zero, dispatch)
            backend.step()
            ref_opt.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(float(mean) / world)
            ref_losses.append(float(ref_loss))
        results[f"z{zero}_losses"] = (losses, ref_losses)
    return results


@pytest.mark.distributed
def test_ep2_matches_reference_under_zero_0_1_2():
    results = run_distributed(_parity, 2, "one_round", [0, 1, 2], 4, timeout_s=120)
    for rank_result in results:
        for zero in (0, 1, 2):
            assert rank_result[f"z{zero}_logits"] < 1e-5
            assert rank_result[f"z{zero}_aux"] < 1e-6
            assert rank_result[f"z{zero}_lb"] < 1e-6
            assert rank_result[f"z{zero}_grads"] < 1e-5, (zero, rank_result[f"z{zero}_grads"])
            losses, ref_losses = rank_result[f"z{zero}_losses"]
            assert losses == pytest.approx(ref_losses, abs=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize(("dispatch", "exchange"), [("per_layer", "dropless"), ("one_round", "padded")])
def test_ep2_per_layer_dispatch_and_padded_exchange_match_reference(dispatch, exchange):
    (result, _) = run_distributed(_parity, 2, dispatch, [0], 3, exchange, timeout_s=120)
    assert result["z0_logits"] < 1e-5 and result["z0_grads"] < 1e-5
    losses, ref_losses = result["z0_losses"]
    assert losses == pytest.approx(ref_losses, abs=1e-5)


def _resume(rank: int, world: int, directory: str, zero: int) -> dict:
    batches = _batches(6)
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)

    def build() -> DeepSpeedDense:
        model = apply_expert_parallel(_model(), 2)
        return DeepSpeedDense(model, DenseOptimizerConfig(name="adam", lr=LR), 6, zero, GLOBAL_BATCH // world, False)

    def train(backend: DeepSpeedDense, chunk: list) -> list[float]:
        out = []
        for dense, pooled, labels in chunk:
            loss = _loss(backend.module(dense[rows], pooled[rows]), labels[rows])
            backend.backward(loss)
            backend.step()
            out.append(float(loss))
        return out

    first = build()
    train(first, batches[:3])
    save_parts(Path(directory), {"dense": first.checkpoint_state()})
    uninterrupted = train(first, batches[3:])
    state = {k: v.clone() for k, v in first.inner.state_dict().items()}
    second = build()
    load_parts(Path(directory), {"dense": second.checkpoint_state()})
    resumed = train(second, batches[3:])
    same = all(torch.equal(v, state[k]) for k, v in second.inner.state_dict().items())
    return {"uninterrupted": uninterrupted, "resumed": resumed, "same_weights": same}


@pytest.mark.distributed
def test_checkpoint_resume_of_expert_parallel_model_is_exact():
    with tempfile.TemporaryDirectory() as directory:
        results = run_distributed(_resume, 2, directory, 2, timeout_s=120)
    for r in results:
        assert r["resumed"] == r["uninterrupted"]
        assert r["same_weights"]


# --------------------------------------------------------------------------------------------------
# single process: the gate contract and the index maths
# --------------------------------------------------------------------------------------------------


def test_route_locations_count_arrivals_per_expert():
    experts_RS = torch.tensor([[0, 2, 0, 1], [2, 2, 1, 0]])
    onehot = F.one_hot(experts_RS.reshape(-1), 3)
    expected = ((onehot.cumsum(0) - 1) * onehot).sum(-1).view(2, 4)
    assert torch.equal(route_locations(experts_RS, 3), expected)


def test_gate_returns_deepspeed_0_19_seven_tuple_and_drops_over_capacity():
    gate = HiLoMoEGate(
        num_experts=4, routes_per_expert_group=2, experts_per_group=4, capacity_factor=0.5, min_capacity=1
    )
    experts = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2]])
    gates = torch.full((4, 2), 0.5)
    out = gate(torch.zeros(4, 6), GateRoutes(experts, gates), True, False)
    assert len(out) == 7
    l_aux, capacity, num_experts, indices, locations, weights, counts = out
    assert capacity == 1 and num_experts == 4 and l_aux.shape == ()
    assert indices.dtype == torch.int32 and locations.dtype == torch.int32 and weights.dtype == torch.float32
    assert indices.shape == locations.shape == weights.shape == (2, 4)
    # expert 0 gets tokens 0, 1, 2 on route 0: capacity 1 keeps token 0 only
    assert indices[0].tolist() == [0, -1, -1, 1]
    assert weights[0].tolist() == [0.5, 0.0, 0.0, 0.5]
    assert counts.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("exchange", ["padded", "dropless"])
def test_deepspeed_moe_layer_runs_our_gate_and_experts_like_the_reference(exchange):
    torch.manual_seed(0)
    ref = HiLoMoELinear(6, 10, num_experts=4, num_layers=2, routing="topk", top_k=2, expert_init_std=0.1)
    ep = DeepSpeedHiLoMoELinear.from_reference(copy.deepcopy(ref), 1, 0, MoEParallelConfig(exchange=exchange))
    assert ep.backend is MoEBackend.DEEPSPEED and ref.backend is MoEBackend.REFERENCE
    assert isinstance(ep.moes[0].deepspeed_moe, MOELayer)
    assert isinstance(ep.moes[0].deepspeed_moe.experts, RankOneExperts)
    x = torch.randn(5, 6)
    reads = deliberate_reads()
    with CountHostReads() as counted:
        y = ep(x)
    torch.testing.assert_close(y, ref(x))
    if exchange == "dropless":  # at ep_size 1 nothing is sent: the split sizes are never read
        assert counted.calls == [] and deliberate_reads() == reads
    assert all(p.allreduce is False for p in ep.moes.parameters())
    assert not any(hasattr(p, "allreduce") for p in ep.router.parameters())


# --------------------------------------------------------------------------------------------------
# three stages under DeepSpeed
# --------------------------------------------------------------------------------------------------

STAGES = [
    StageConfig(name="backbone", train="backbone", steps=2),
    StageConfig(name="experts", train="experts", steps=2),
    StageConfig(name="joint", train="all", steps=2),
]


def _staged(model: torch.nn.Module, step_fn, param_groups) -> list[float]:
    batches, losses, i = _batches(6), [], 0
    for stage in STAGES:
        apply_training_stage(model, stage)
        for group, scale in zip(param_groups(), stage_group_scales(param_groups(), stage)):
            group["lr"] = LR * scale
        for _ in range(stage.steps):
            losses.append(step_fn(*batches[i]))
            i += 1
    return losses


def _staged_deepspeed(rank: int, world: int, zero: int) -> dict:
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    ref = _model()
    ref_opt = torch.optim.Adam(role_param_groups(ref), lr=LR)

    def ref_step(dense, pooled, labels) -> float:
        loss = _loss(ref(dense, pooled), labels)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        return float(loss)

    model = apply_expert_parallel(_model(), 2)
    groups = split_params_into_different_moe_groups_for_optimizer(role_param_groups(model))
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
        "zero_optimization": {"stage": zero},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(groups, lr=LR), config=config)

    def ep_step(dense, pooled, labels) -> float:
        loss = _loss(engine(dense[rows], pooled[rows]), labels[rows])
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        return float(mean) / world

    return {
        "reference": _staged(ref, ref_step, lambda: ref_opt.param_groups),
        "deepspeed": _staged(model, ep_step, lambda: engine.optimizer.param_groups),
    }


@pytest.mark.distributed
def test_three_stages_under_deepspeed_zero0_match_the_reference():
    result = run_distributed(_staged_deepspeed, 2, 0, timeout_s=120)[0]
    assert result["deepspeed"] == pytest.approx(result["reference"], abs=1e-5)


@pytest.mark.distributed
def test_three_stages_under_deepspeed_zero2_run_within_adam_state_noise():
    """ZeRO 1/2 step flattened per-group partitions: a frozen group's Adam state (step count,
    moments) advances on zero gradients while its lr is 0, so its weights stay but later steps differ slightly.
    """
    result = run_distributed(_staged_deepspeed, 2, 2, timeout_s=120)[0]
    assert result["deepspeed"][:3] == pytest.approx(result["reference"][:3], abs=1e-5)
    assert result["deepspeed"] == pytest.approx(result["reference"], abs=1e-3)


def test_capacity_padded_flops():
    ref = HiLoMoELinear(16, 8, num_experts=4, num_layers=3, routing="topk", top_k=2)
    active = ref.linear_flops()
    padded = MoEParallelConfig(exchange="padded", capacity_factor=0.0)
    exact = DeepSpeedHiLoMoELinear.from_reference(copy.deepcopy(ref), 1, 0, padded)
    # capacity = all tokens: every expert runs every token, K/A = 2 times the routed expert work
    assert exact.capacity_padded_flops(64) == ref._flops(4, True)
    cfg = MoEParallelConfig(exchange="padded", capacity_factor=1.0)
    padded_f1 = DeepSpeedHiLoMoELinear.from_reference(copy.deepcopy(ref), 1, 0, cfg)
    assert padded_f1.capacity_padded_flops(64) == active  # factor 1 and even loads: no padding
