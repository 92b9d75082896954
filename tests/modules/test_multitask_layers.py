"""MMoE and CGC / PLE layers: shapes, the gated mixtures against a hand computation of the papers'
equations, the shared-gate variants, and the analytic FLOPs against ``FlopCounterMode``."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recscale.modules.flops import total
from recscale.modules.multitask import PLE, MMoE, SharedGate

B, D = 5, 12


def _x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, D, requires_grad=True)


def test_mmoe_is_each_tasks_gate_weighted_sum_of_the_shared_experts():
    torch.manual_seed(1)
    layer = MMoE(D, num_tasks=3, num_experts=4, expert_widths=[16, 8])
    x = _x()
    out = layer(x)
    assert [o.shape for o in out] == [torch.Size([B, 8])] * 3
    experts = [expert(x) for expert in layer.experts.experts]  # E_i(x) [B, 8]
    for k, gate in enumerate(layer.gates):
        g = torch.softmax(gate.proj(x), dim=-1)  # softmax(W_k x) [B, 4]
        assert torch.allclose(g.sum(-1), torch.ones(B))
        expected = sum(g[:, i : i + 1] * experts[i] for i in range(4))
        assert torch.allclose(out[k], expected, atol=1e-6)
        assert torch.equal(layer.last_weights[k], g)


def test_cgc_task_gate_mixes_its_own_and_the_shared_experts_only():
    torch.manual_seed(2)
    layer = PLE(D, num_tasks=2, num_levels=1, task_experts=2, shared_experts=3, expert_widths=[8])
    level = layer.levels[0]
    assert level.shared_gate is None  # one level (CGC): nothing reads a shared stream after it
    x = _x()
    out = layer(x)
    shared = [e(x) for e in level.shared_experts.experts]
    for k in range(2):
        own = [e(x) for e in level.task_experts[k].experts]
        g = level.task_gates[k](x)
        assert g.shape == (B, 2 + 3)
        expected = sum(g[:, i : i + 1] * e for i, e in enumerate(own + shared))
        assert torch.allclose(out[k], expected, atol=1e-6)


@pytest.mark.parametrize(("kind", "width"), [(SharedGate.ALL, 2 * 2 + 3), (SharedGate.SHARED_ONLY, 3)])
def test_ple_shared_gate_mixes_every_expert_or_only_the_shared_ones_and_none_at_the_last_level(kind, width):
    layer = PLE(D, num_tasks=2, num_levels=3, task_experts=2, shared_experts=3, expert_widths=[8], shared_gate=kind)
    gates = [level.shared_gate for level in layer.levels]
    assert [g.proj.out_features if g is not None else None for g in gates] == [width, width, None]
    assert layer.levels[1].task_experts[0].experts[0][0].in_features == 8  # level 2 reads level 1's streams
    out = layer(_x())
    assert [o.shape for o in out] == [torch.Size([B, 8])] * 2


def test_ple_level_two_streams_follow_the_equations():
    torch.manual_seed(3)
    layer = PLE(D, num_tasks=2, num_levels=2, task_experts=1, shared_experts=2, expert_widths=[6])
    first, second = layer.levels
    x = _x()
    t0, t1 = (first.task_gates[k](x) for k in range(2))
    own0, own1 = first.task_experts[0](x), first.task_experts[1](x)  # [B, 1, 6]
    shared = first.shared_experts(x)  # [B, 2, 6]
    stream0 = torch.einsum("bn,bnd->bd", t0, torch.cat([own0, shared], 1))
    stream1 = torch.einsum("bn,bnd->bd", t1, torch.cat([own1, shared], 1))
    shared_stream = torch.einsum("bn,bnd->bd", first.shared_gate(x), torch.cat([own0, own1, shared], 1))
    expected, _ = second([stream0, stream1], shared_stream)
    got = layer(x)
    for k in range(2):
        assert torch.allclose(got[k], expected[k], atol=1e-6)


CASES = {
    "mmoe": lambda: MMoE(D, num_tasks=2, num_experts=3, expert_widths=[16, 8]),
    "mmoe-mlp-gates": lambda: MMoE(D, num_tasks=3, num_experts=2, expert_widths=[8], gate_hidden=[6]),
    "cgc": lambda: PLE(D, num_tasks=2, num_levels=1, task_experts=2, shared_experts=1, expert_widths=[8, 4]),
    "ple-all": lambda: PLE(D, num_tasks=3, num_levels=2, task_experts=1, shared_experts=2, expert_widths=[8]),
    "ple-shared-only": lambda: PLE(
        D, 2, 3, task_experts=2, shared_experts=1, expert_widths=[8], shared_gate=SharedGate.SHARED_ONLY
    ),
    "ple-no-task-experts": lambda: PLE(
        D, num_tasks=2, num_levels=2, task_experts=0, shared_experts=2, expert_widths=[8]
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_analytic_flops_match_flop_counter(name):
    torch.manual_seed(4)
    layer = CASES[name]()
    x = _x()
    counter = FlopCounterMode(display=False)
    with counter:
        out = layer(x)
    forward = counter.get_total_flops()
    with counter:
        sum(o.sum() for o in layer(x)).backward()
    analytic = total(layer.flops())
    assert analytic.forward * B == forward
    assert analytic.train * B == counter.get_total_flops()
    assert len(out) == layer.num_tasks if isinstance(layer, PLE) else len(layer.gates)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="at least one task and one expert"):
        MMoE(D, num_tasks=2, num_experts=0, expert_widths=[8])
    with pytest.raises(ValueError, match="at least one level"):
        PLE(D, 2, 0, 1, 1, [8])
    with pytest.raises(ValueError, match="at least one expert per task stream"):
        PLE(D, 2, 1, 0, 0, [8])
    with pytest.raises(ValueError, match="at least one layer"):
        MMoE(D, 2, 2, [])


def test_multitask_config_problems_name_their_keys():
    from recscale.modules.registry import check_model
    from tests.batches import tiny_config

    wukong = tiny_config(model={"arch": "wukong", "multitask": {"structure": "mmoe"}})
    assert any(p.startswith("model.multitask.structure: mmoe runs over dlrm or dcnv2") for p in check_model(wukong))
    bad = tiny_config(model={"multitask": {"structure": "ple", "task_experts": 0, "shared_experts": 0}})
    assert any(p.startswith("model.multitask.task_experts / shared_experts") for p in check_model(bad))
    none = tiny_config(model={"multitask": {"structure": "mmoe", "num_experts": 0}})
    assert any(p.startswith("model.multitask.num_experts") for p in check_model(none))
    assert check_model(tiny_config(model={"multitask": {"structure": "shared_bottom"}})) == []
    sb = tiny_config(model={"multitask": {"structure": "shared_bottom", "expert_input": "interaction"}})
    assert any(p.startswith("model.multitask.expert_input: interaction needs experts") for p in check_model(sb))


@pytest.mark.parametrize("arch", ["dcnv2", "dlrm"])
def test_experts_on_the_interaction_read_it_and_replace_the_shared_mlp(arch):
    """``expert_input: interaction``: the arch's top / deep MLP is gone (nothing would train it) and the
    experts read the cross output / dot products: logits = heads(towers(PLE(interact(dense, pooled))))."""
    from recscale.modules.build import build_model
    from tests.batches import random_batch, tiny_config

    multitask = {"structure": "ple", "expert_widths": [8], "tower": [4], "expert_input": "interaction"}
    features = {"labels": ["click", "buy"], "dense": ["d0", "d1", "d2"]}
    features["sparse"] = [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)]
    cfg = tiny_config(
        model={"arch": arch, "dense_arch": [16, 8], "over_arch": [16], "multitask": multitask},
        data={"features": features},
    )
    built = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    dense = built.dense
    bottom = dense.bottom
    assert getattr(bottom, "deep", None) is None and getattr(bottom, "top", None) is None
    assert not [n for n, _ in dense.named_parameters() if n.startswith(("bottom.deep", "bottom.top"))]
    batch = random_batch(cfg, B, seed=3)
    pooled = built.sparse(batch.sparse)
    logits, _, _ = dense(batch.dense, pooled)
    z = bottom.interact(batch.dense, pooled)
    assert z.shape == (B, bottom.interaction_dim)
    streams = dense.layer(z)
    expected = torch.cat([head(tower(x)) for head, tower, x in zip(dense.heads, dense.towers, streams)], dim=1)
    assert torch.equal(logits, expected)
