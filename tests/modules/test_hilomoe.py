"""HiLoMoE reference block: math, routing independence, aux losses, FLOPs, tower conversion."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs.schema import HiLoMoEConfig
from recscale.modules.build import build_model, flops_per_example
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.flops import total
from recscale.modules.hilomoe import HiLoMoELinear, MoEDense, build_moe_dense, moe_blocks
from recscale.modules.hilomoe.routing import (
    Routing,
    balance_stats,
    diversity_penalty,
    load_balance_loss,
    router_z_loss,
)
from recscale.modules.registry import check_model
from tests.batches import tiny_config


def _block(**kwargs) -> HiLoMoELinear:
    torch.manual_seed(0)
    args = {"num_experts": 5, "num_layers": 3, "expert_init_std": 0.2, **kwargs}
    return HiLoMoELinear(12, 7, **args)


def _loop_reference(block: HiLoMoELinear, x: torch.Tensor) -> torch.Tensor:
    """The straightforward form: one MoE layer after the other, each with its own matmuls."""
    r = block.router
    y = block.base(x)
    q = r.query(x) if r.query is not None else x
    for layer in range(block.num_layers):
        v, u = block.experts_v[layer], block.experts_u[layer]
        logits = (q @ v.t()) * r.scale
        if r.routing == "topk":
            top, idx = logits.topk(r.top_k, dim=-1)
            s = torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))
        else:
            s = logits.softmax(-1)
        y = y + ((x @ v.t()) * s) @ u
        q = q + s @ v
    return y


@pytest.mark.parametrize("routing", ["dense", "topk"])
@pytest.mark.parametrize("compute", ["dense", "gather"])
def test_batched_layers_equal_a_per_layer_loop(routing, compute):
    block = _block(routing=routing, top_k=2, expert_compute=compute)
    x = torch.randn(9, 12, requires_grad=True)
    y = block(x)
    y_ref = _loop_reference(block, x)
    torch.testing.assert_close(y, y_ref)
    g = torch.autograd.grad(y.square().sum(), [x, block.experts_v, block.experts_u, block.router.query.weight])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, block.experts_v, block.experts_u, block.router.query.weight])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_a_fresh_block_is_its_base_layer():
    layer = torch.nn.Linear(12, 7)
    block = HiLoMoELinear.from_linear(layer, num_experts=4, num_layers=2)
    assert block.base is layer
    x = torch.randn(3, 12)
    torch.testing.assert_close(block(x), layer(x))


def test_routes_depend_on_previous_scores_not_on_outputs():
    block = _block(routing="topk", top_k=2)
    x = torch.randn(16, 12)
    before = block.router(x, block.experts_v)
    # expert outputs (U) and the base layer change the block's output but never its routes
    grads = torch.autograd.grad(before.logits_BLK.sum(), [block.experts_u, block.base.weight], allow_unused=True)
    assert grads == (None, None)
    with torch.no_grad():
        block.experts_u.add_(1.0)
        block.base.weight.mul_(3.0)
    after = block.router(x, block.experts_v)
    torch.testing.assert_close(after.logits_BLK, before.logits_BLK)
    # layer l's scores depend on layers < l only: perturbing the last layer's keys leaves the others alone
    with torch.no_grad():
        block.experts_v[2].add_(0.5)
    last = block.router(x, block.experts_v)
    torch.testing.assert_close(last.logits_BLK[:, :2], before.logits_BLK[:, :2])
    assert not torch.allclose(last.logits_BLK[:, 2], before.logits_BLK[:, 2])
    with torch.no_grad():
        block.experts_v[0].add_(0.5)
    first = block.router(x, block.experts_v)
    assert not torch.allclose(first.logits_BLK[:, 1], last.logits_BLK[:, 1])  # layer 1 follows layer 0's scores


def test_topk_routing_weights_and_dense_limit():
    topk = _block(routing="topk", top_k=2)
    x = torch.randn(10, 12)
    r = topk.router(x, topk.experts_v)
    assert ((r.weights_BLK > 0).sum(-1) == 2).all()
    torch.testing.assert_close(r.weights_BLK.sum(-1), torch.ones(10, 3))
    assert torch.equal(r.weights_BLK.gather(-1, r.experts_BLA), r.gates_BLA)
    dense = _block(routing="dense")
    d = dense.router(x, dense.experts_v)
    assert (d.weights_BLK > 0).all() and d.experts_BLA.shape == (10, 3, 5)
    everything = _block(routing="topk", top_k=5)  # top-K over all experts == dense softmax
    torch.testing.assert_close(everything(x), dense(x))


@pytest.mark.parametrize("routing", ["dense", "topk"])
def test_route_dropout_drops_whole_routes_in_training_only(routing):
    p = 0.5
    block = _block(routing=routing, top_k=2, route_dropout=p)
    plain = _block(routing=routing, top_k=2)
    x = torch.randn(64, 12)
    torch.testing.assert_close(block.eval()(x), plain.eval()(x))  # evaluation never drops
    block.train()
    torch.manual_seed(1)
    r = block.router(x, block.experts_v)
    ref = plain.router(x, plain.experts_v)
    torch.testing.assert_close(r.logits_BLK, ref.logits_BLK)  # the chain runs on undropped scores
    kept = r.weights_BLK != 0
    routed = ref.weights_BLK != 0
    assert (kept <= routed).all() and 0.3 < kept.sum() / routed.sum() < 0.7
    torch.testing.assert_close(r.weights_BLK[kept], ref.weights_BLK[kept] / (1 - p))
    assert torch.equal(r.weights_BLK.gather(-1, r.experts_BLA), r.gates_BLA)
    # the block's output is its base plus the kept routes' experts only
    torch.manual_seed(1)
    y = block(x)
    v, u = block.experts_v, block.experts_u
    expert = torch.einsum("bi,lki,blk,lko->bo", x, v, r.weights_BLK, u)
    torch.testing.assert_close(y, block.base(x) + expert)
    with pytest.raises(ValueError, match="route_dropout"):
        _block(route_dropout=1.0)


def test_identity_query_and_separate_keys():
    block = _block(query="identity", router_keys="separate")
    assert block.router.query is None and block.router.keys is not None
    x = torch.randn(4, 12)
    r = block.router(x)
    logits0 = (x @ block.router.keys[0].t()) * (1 / math.sqrt(12))
    torch.testing.assert_close(r.logits_BLK[:, 0], logits0)
    assert torch.autograd.grad(r.logits_BLK.sum(), block.experts_v, allow_unused=True) == (None,)


def test_aux_losses_against_hand_computation():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]], [[1.0, 0.0]]])  # B=4, L=1, K=2
    probs = logits.softmax(-1)
    top1 = logits.argmax(-1, keepdim=True)
    routing = Routing(logits, probs, top1, probs.gather(-1, top1))  # top-1 routing
    lb, load = load_balance_loss(balance_stats(routing), 1, 2)
    f = torch.tensor([3 / 4, 1 / 4])
    p = probs[:, 0].mean(0)
    assert float(lb) == pytest.approx(2 * float((f * p).sum()))
    torch.testing.assert_close(load, f.view(1, 2))
    lse = torch.log(torch.exp(logits[:, 0]).sum(-1))
    assert float(router_z_loss(routing)) == pytest.approx(float((lse**2).mean()))
    # diversity: orthogonal keys cost 0; two identical unit rows cost 2 off-diagonal ones / K²
    assert float(diversity_penalty(torch.eye(3).view(1, 3, 3))) == pytest.approx(0.0)
    same = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    assert float(diversity_penalty(same)) == pytest.approx(2 / 4)
    assert float(diversity_penalty(same, normalize=False)) == pytest.approx((0 + 2 * 2**2 + 3**2) / 4)


def test_block_aux_total_is_the_weighted_sum():
    block = _block(routing="topk", top_k=2, aux_weights=None, diversity_normalize=True)
    block.aux_weights = type(block.aux_weights)(load_balance=0.1, z_loss=0.01, diversity=0.5)
    block(torch.randn(8, 12))
    aux = block.last_aux
    assert float(aux.diversity.detach()) > 0
    expected = 0.1 * aux.load_balance + 0.01 * aux.z_loss + 0.5 * aux.diversity
    torch.testing.assert_close(aux.total, expected)
    block.set_aux_scales(load_balance=0.0, z_loss=2.0, diversity=0.0)
    block(torch.randn(8, 12))
    torch.testing.assert_close(block.last_aux.total, 0.02 * block.last_aux.z_loss)


@pytest.mark.parametrize(
    ("i", "o", "k", "layers", "routing", "compute"),
    [
        (12, 7, 5, 3, "dense", "dense"),
        (32, 32, 8, 2, "topk", "gather"),
        (64, 16, 16, 4, "topk", "dense"),
        (20, 40, 4, 1, "dense", "gather"),
    ],
)
@pytest.mark.parametrize("input_grad", [True, False])
def test_flops_match_flop_counter(i, o, k, layers, routing, compute, input_grad):
    torch.manual_seed(0)
    block = HiLoMoELinear(
        i, o, num_experts=k, num_layers=layers, routing=routing, top_k=2, expert_compute=compute, expert_init_std=0.1
    )
    b = 6
    x = torch.randn(b, i, requires_grad=input_grad)
    with FlopCounterMode(display=False) as fwd:
        y = block(x)
    with FlopCounterMode(display=False) as bwd:
        (y.sum() + block.last_aux.total).backward()
    executed = block.executed_flops(input_grad)
    assert fwd.get_total_flops() == b * executed.forward
    assert bwd.get_total_flops() == b * executed.backward
    if compute == "gather" or routing == "dense":  # only the routed experts run: active == executed
        assert block.linear_flops(input_grad) == executed


def _moe_dcnv2(routing: str = "topk") -> MoEDense:
    torch.manual_seed(0)
    inner = DCNv2Dense(3, 16, bottom=[8], deep=[24, 12], num_cross_layers=2, low_rank=4)
    cfg = HiLoMoEConfig(num_experts=4, num_layers=2, routing=routing, top_k=2, expert_compute="gather")
    return build_moe_dense(inner, cfg, ["deep"])


def test_converted_dcnv2_returns_aux_and_diagnostics_and_counts_flops():
    model = _moe_dcnv2()
    assert [name for name, _ in moe_blocks(model)] == ["inner.deep.0", "inner.deep.2"]
    dense, pooled = torch.randn(5, 3), torch.randn(5, 16, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        logits, aux, diag = model(dense, pooled)
    with FlopCounterMode(display=False) as bwd:
        (logits.sum() + aux).backward()
    assert aux.requires_grad and float(aux.detach()) > 0
    for key in ("moe/aux_loss", "moe/load_balance", "moe/z_loss", "moe/diversity", "moe/load_max"):
        assert diag[key].numel() == 1
    assert diag["moe/expert_load"].shape == (2 * 2 * 4,)
    count = total(model.flops())
    assert fwd.get_total_flops() == 5 * count.forward
    assert bwd.get_total_flops() == 5 * count.backward


def test_single_linear_targets_dcnv2_cross_layers():
    """``cross.*.full`` converts each full-rank cross layer's W: same outputs at U = 0, FLOPs still exact."""
    torch.manual_seed(0)
    plain = DCNv2Dense(3, 16, bottom=[], deep=[24], num_cross_layers=2, low_rank=0)
    converted = copy.deepcopy(plain)
    cfg = HiLoMoEConfig(num_experts=4, num_layers=2, routing="dense", towers=["cross.*.full", "deep"])
    model = build_moe_dense(converted, cfg, [])
    assert [name for name, _ in moe_blocks(model)] == ["inner.cross.0.full", "inner.cross.1.full", "inner.deep.0"]
    dense, pooled = torch.randn(5, 3), torch.randn(5, 16, requires_grad=True)
    torch.testing.assert_close(model(dense, pooled)[0], plain(dense, pooled)[0], rtol=0, atol=0)
    for _, block in moe_blocks(model):  # experts on: outputs move, and the count follows them
        torch.nn.init.normal_(block.experts_u)
    with FlopCounterMode(display=False) as fwd:
        logits, aux, _ = model(dense, pooled)
    with FlopCounterMode(display=False) as bwd:
        (logits.sum() + aux).backward()
    assert not torch.allclose(logits, plain(dense, pooled)[0])
    count = total(model.flops())
    assert count.forward > total(plain.flops()).forward
    assert fwd.get_total_flops() == 5 * count.forward
    assert bwd.get_total_flops() == 5 * count.backward


def test_layers_option_and_bad_tower_paths():
    inner = DCNv2Dense(3, 16, bottom=[], deep=[24, 12, 6], num_cross_layers=1, low_rank=4)
    model = build_moe_dense(inner, HiLoMoEConfig(layers=[-1]), ["deep"])
    assert [name for name, _ in moe_blocks(model)] == ["inner.deep.4"]
    with pytest.raises(ValueError, match="model.hilomoe.towers"):
        build_moe_dense(DCNv2Dense(3, 16, [], [8], 1, 4), HiLoMoEConfig(towers=["nope"]), [])
    with pytest.raises(ValueError, match="model.hilomoe.layers"):
        build_moe_dense(DCNv2Dense(3, 16, [], [8], 1, 4), HiLoMoEConfig(layers=[3]), ["deep"])


@pytest.mark.parametrize("arch", ["dcnv2_hilomoe", "wukong_hilomoe"])
def test_registry_builds_hilomoe_models(arch):
    cfg = tiny_config(model={"arch": arch, "dense_arch": [16], "over_arch": [16], "hilomoe": {"routing": "topk"}})
    built = build_model(cfg, sparse_device="cpu")
    assert isinstance(built.dense, MoEDense) and moe_blocks(built.dense)
    logits, aux, diag = built.dense(torch.randn(4, 3), torch.randn(4, 32))
    assert logits.shape == (4, 1) and "moe/load_balance" in diag
    assert flops_per_example(cfg).forward > 0


def test_experts_off_means_base_model_and_no_aux():
    model = _moe_dcnv2()
    for _, block in moe_blocks(model):
        block.experts_enabled = False
    logits, aux, diag = model(torch.randn(4, 3), torch.randn(4, 16))
    assert float(aux) == 0.0 and "moe/load_balance" not in diag
    blocks = [b for _, b in moe_blocks(model)]
    x = torch.randn(2, blocks[0].in_features)
    torch.testing.assert_close(blocks[0](x), F.linear(x, blocks[0].base.weight, blocks[0].base.bias))


def test_hilomoe_config_problems_name_their_keys():
    cfg = tiny_config(
        model={
            "arch": "dcnv2_hilomoe",
            "hilomoe": {"num_experts": 3, "routing": "topk", "top_k": 5, "route_dropout": 1.0},
        },
        sharding={"dense": "deepspeed", "ep_size": 2, "moe": {"dispatch": "per_layer", "capacity_factor": -1.0}},
    )
    problems = "\n".join(check_model(cfg))
    for key in (
        "model.hilomoe.top_k",
        "model.hilomoe.route_dropout",
        "sharding.ep_size",
        "sharding.moe.capacity_factor",
    ):
        assert key in problems
    cfg.sharding.moe.dispatch = "one_round"  # 2 layers x 3 experts = 6 experts per dispatch: divisible by 2
    cfg.sharding.moe.capacity_factor = 0.0
    cfg.model.hilomoe.top_k = 2
    cfg.model.hilomoe.route_dropout = 0.1
    assert check_model(cfg) == []
