"""Lattice: shapes with and without sequences, FLOPs against FlopCounterMode, ECS zero-init, domain untying,
QK-norm and RoPE, SwishNorm formulas, bf16, registry and config checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs.validate import collect_problems
from recscale.modules.attention import AttentionBackend
from recscale.modules.build import build_model, flops_per_example
from recscale.modules.flops import FlopCount, Lengths, total
from recscale.modules.lattice import LatticeDense, LatticeOptions, SwishNorm, TransformerBlock
from recscale.modules.lattice.layers import RMS_EPS
from recscale.modules.layout import PooledLayout
from recscale.modules.registry import check_model
from tests.batches import random_batch, tiny_config
from tests.modules.seq_helpers import counted_flops, cpu_sdpa_flop_counting, padded_inputs, seq_batch, seq_config

POOLED = PooledLayout(("a", "b", "c"), (8, 8, 4))  # c is projected to the token width 8
SEQ_DIMS = {"click": 8, "buy": 6}  # buy is projected
SEQ_LENGTHS = {"click": 6, "buy": 4}


def _model(sequences: bool = True, num_dense: int = 3, num_tasks: int = 2, seed: int = 0, **opts: Any) -> LatticeDense:
    base: dict[str, Any] = {
        "dim": 8,
        "num_layers": 2,
        "dense_tokens": 2,
        "seq_tokens": 3,
        "num_heads": 2,
        "ffn_dim": 12,
        "num_fmb_tokens": 4,
        "num_lcb_tokens": 3,
        "fm_rank": 3,
        "fmb_mlp": (16,),
        "task_mlp": (8,),
        "backend": AttentionBackend.REFERENCE,
    }
    torch.manual_seed(seed)
    return LatticeDense(
        num_dense=num_dense,
        dense_arch=[6],
        pooled=POOLED,
        opts=LatticeOptions(**{**base, **opts}),
        sequence_dims=SEQ_DIMS if sequences else None,
        sequence_lengths=SEQ_LENGTHS if sequences else None,
        num_tasks=num_tasks,
    )


def _inputs(b: int = 4, seed: int = 0, num_dense: int = 3) -> dict[str, Any]:
    """Right-aligned sequences (row 1 empty, garbage at padding), timestamps, domains 0/1."""
    g = torch.Generator().manual_seed(seed)
    seqs, masks, times = {}, {}, {}
    for name, dim in SEQ_DIMS.items():
        s, m, t = padded_inputs(b, {name: SEQ_LENGTHS[name]}, dim, seed=seed + dim)
        seqs[name], masks[name], times[name] = s[name], m[name], t[name]
    return {
        "dense": torch.randn(b, num_dense, generator=g),
        "pooled": torch.randn(b, 20, generator=g),
        "sequences": seqs,
        "masks": masks,
        "timestamps": times,
        "domain": torch.arange(b) % 2,
    }


# -- shapes -----------------------------------------------------------------------------------------


def test_shapes_without_sequences() -> None:
    model = _model(sequences=False)
    assert model.processors.num_tokens == 3 + 2 and model.token_counts == [5, 7, 7]
    assert len(model.tb) == 2 and all(len(layer) == 0 for layer in model.tb)
    x = _inputs()
    logits, aux, diag = model(x["dense"], x["pooled"])
    assert logits.shape == (4, 2) and float(aux) == 0.0 and diag == {}
    assert model(x["dense"], x["pooled"], None, None, None, x["domain"])[0].shape == (4, 2)
    assert model.dwfb[0].num_tokens == 5  # no compressed sequence tokens
    assert set(model.flops()) == {"lattice/processors", "lattice/dwfb", "lattice/ecs", "lattice/heads"}


def test_shapes_with_sequences_and_padding_never_leaks() -> None:
    model = _model().eval()
    x = _inputs()
    assert model.dwfb[0].num_tokens == 2 * 3 + 5  # two events x seq_tokens + O_cd
    logits, aux, _ = model(**x)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all() and float(aux) == 0.0
    noisy = {
        k: torch.where(x["masks"][k].unsqueeze(-1), v, 50 * torch.randn_like(v)) for k, v in x["sequences"].items()
    }
    torch.testing.assert_close(model(**{**x, "sequences": noisy})[0], logits)
    with pytest.raises(ValueError, match="built with event sequences"):
        model(x["dense"], x["pooled"])


def test_processors_keep_same_width_features_and_project_the_others() -> None:
    model = _model(sequences=False)
    pooled = torch.randn(3, 20)
    tokens = model.processors(torch.randn(3, 3), pooled)
    assert tokens.shape == (3, 5, 8)
    torch.testing.assert_close(tokens[:, 0], pooled[:, 0:8])  # a: as is
    torch.testing.assert_close(tokens[:, 2], model.processors.proj[2](pooled[:, 16:20]))  # c: bias-less Linear
    assert model.processors.proj[2].bias is None


# -- FLOPs ------------------------------------------------------------------------------------------

FLOP_CASES = {
    "no-seq-ecs": {"sequences": False},
    "no-seq-no-dense-untied": {"sequences": False, "num_dense": 0, "dense_tokens": 0, "untie_domains": 3},
    "seq-ecs-off-untied": {"ecs": False, "untie_domains": 2},
    "seq-ecs-tokens-3-layers-time": {"num_layers": 3, "ecs_map": "tokens", "rope": "time", "qk_norm": False},
    "seq-x-gate-bias-flat": {"num_layers": 3, "swish_norm": "x_gate_norm", "bias": True, "num_lcb_tokens": 0},
}


@pytest.mark.parametrize("case", sorted(FLOP_CASES))
def test_flops_match_flop_counter_forward_and_backward(case: str) -> None:
    kwargs = dict(FLOP_CASES[case])
    sequences, num_dense = kwargs.pop("sequences", True), kwargs.pop("num_dense", 3)
    model = _model(sequences=sequences, num_dense=num_dense, **kwargs)
    b = 3
    x = _inputs(b, num_dense=num_dense)
    x["pooled"].requires_grad_(True)  # the embeddings train: their input gradients count
    for s in x["sequences"].values():
        s.requires_grad_(True)
    if not sequences:
        x = {**x, "sequences": None, "masks": None, "timestamps": None}
    fwd, bwd = counted_flops(lambda: model(**x)[0])
    count = total(model.flops())
    assert count.forward > 0 and count.backward > count.forward
    assert (fwd, bwd) == (b * count.forward, b * count.backward)
    assert total(model.flops(executed=True)) == count  # the reference kernel runs exactly the model FLOPs


def test_flops_of_each_part_match_the_counter_forward() -> None:
    model = _model(num_layers=3, untie_domains=2)
    x = _inputs(2)
    with FlopCounterMode(display=False) as fc:
        model(**x)
    counted = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    parts = model.flops()
    assert set(parts) == {f"lattice/{k}" for k in ("processors", "seq_proj", "tb", "compress", "dwfb", "ecs", "heads")}
    for key, count in parts.items():
        prefix = "LatticeDense." + key.split("/")[1]
        mine = [k for k in counted if k == prefix or k.startswith(prefix + ".")]
        outermost = [k for k in mine if not any(k.startswith(o + ".") for o in mine)]  # containers are not called
        assert sum(counted[k] for k in outermost) == 2 * count.forward, key


def test_sdpa_executed_flops_match_the_counter() -> None:
    cpu_sdpa_flop_counting()
    model = _model(backend=AttentionBackend.SDPA)
    x = _inputs(3)
    for s in x["sequences"].values():
        s.requires_grad_(True)
    x["pooled"].requires_grad_(True)
    fwd, bwd = counted_flops(lambda: model(**x)[0])
    executed, modelled = total(model.flops(executed=True)), total(model.flops())
    assert (fwd, bwd) == (3 * executed.forward, 3 * executed.backward)
    assert executed.backward > modelled.backward  # SDPA's backward recomputes Q Kᵀ


def test_flops_at_real_lengths_sum_over_examples() -> None:
    model = _model(untie_domains=2)
    batch = model.flops({"click": Lengths([2, 6, 0]), "buy": Lengths([4, 1, 3])})
    one = [model.flops({"click": c, "buy": k}) for c, k in ((2, 4), (6, 1), (0, 3))]
    for key, count in batch.items():
        assert count == sum((o[key] for o in one), FlopCount()), key
    assert total(batch).train < 3 * total(model.flops()).train  # padding is not model FLOPs


# -- ECS, untying -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ecs_map", ["flat", "tokens"])
def test_ecs_is_zero_at_init_so_the_network_starts_as_the_plain_stack(ecs_map: str) -> None:
    with_ecs = _model(num_layers=3, ecs=True, ecs_map=ecs_map, seed=0)
    without = _model(num_layers=3, ecs=False, seed=1)
    missing, unexpected = with_ecs.load_state_dict(without.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(f"ecs.maps.{k}.weight" for k in ("2_0", "3_0", "3_1"))
    x = _inputs()
    assert torch.equal(with_ecs(**x)[0], without(**x)[0])
    with torch.no_grad():
        with_ecs.ecs.maps["3_0"].weight.normal_()
    assert not torch.allclose(with_ecs(**x)[0], without(**x)[0])


def test_untied_rows_depend_only_on_their_domain_group() -> None:
    model = _model(untie_domains=2).eval()
    x = _inputs(6)
    before = model(**x)[0]
    group1 = [p for n, p in model.named_parameters() if ".groups.1." in n]
    assert group1 and all(".ffn." in n or ".fmb.mlp." in n for n, _ in model.named_parameters() if ".groups.1." in n)
    with torch.no_grad():
        for p in group1:
            p.add_(torch.randn_like(p))
    after = model(**x)[0]
    dom0, dom1 = x["domain"] == 0, x["domain"] == 1
    assert torch.equal(after[dom0], before[dom0])
    assert not torch.allclose(after[dom1], before[dom1])
    model.zero_grad()
    model(**x)[0][dom0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in group1)
    with pytest.raises(ValueError, match="untie_domains"):
        model(**{**x, "domain": None})


def test_domain_groups_untie_by_group_as_the_same_model_does_on_group_ids() -> None:
    """Domains {0, 2} and {1, 3} as two groups: the model on domain ids equals the untie_domains=2 model (same
    weights) on the group ids; ids above the last domain read its group."""
    grouped = _model(domain_groups=((0, 2), (1, 3))).eval()
    by_id = _model(untie_domains=2).eval()
    assert grouped.groups == 2
    by_id.load_state_dict(grouped.state_dict())
    x = _inputs(6)
    domain = torch.tensor([0, 1, 2, 3, 2, 9])
    group = torch.tensor([0, 1, 0, 1, 0, 1])
    assert torch.equal(grouped(**{**x, "domain": domain})[0], by_id(**{**x, "domain": group})[0])
    cfg = seq_config("lattice", model={"lattice": {**SMALL, "domain_groups": [[0, 1], [1, 2]], "untie_domains": 3}})
    problems = "\n".join(check_model(cfg))
    assert "model.lattice.domain_groups: expected non-empty groups that together hold each domain id" in problems
    assert "model.lattice.untie_domains: 3 copies, but domain_groups has 2 groups; expected 0 or 2" in problems


# -- Transformer block: QK-norm and RoPE -----------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w


def test_queries_and_keys_are_qk_normed_per_head_then_rotated() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 12, qk_norm=True, rope_base=100.0)
    with torch.no_grad():  # non-uniform gains: normalising after rotating would give another result
        block.q_norm.weight.uniform_(0.5, 2.0)
        block.k_norm.weight.uniform_(0.5, 2.0)
    a = torch.randn(2, 5, 8)
    positions = torch.tensor([[0.0, 1, 2, 3, 4], [3, 5, 8, 9, 20]])
    q, k, _ = block.queries_keys(a, positions)
    raw_q = (a @ block.qkv.weight[:8].T).view(2, 5, 2, 4).transpose(1, 2)  # [B, H, L, d_h]
    n = _rms(raw_q, block.q_norm.weight)
    angle = positions[:, None, :, None] * 100.0 ** (-torch.arange(2) * 2.0 / 4)  # pairs (c, c + 2)
    cos, sin = angle.cos(), angle.sin()
    expect = torch.cat([n[..., :2] * cos - n[..., 2:] * sin, n[..., :2] * sin + n[..., 2:] * cos], -1)
    torch.testing.assert_close(q, expect)
    scores = q @ k.transpose(-1, -2)
    q2, k2, _ = block.queries_keys(a, positions + 7.0)  # RoPE: scores depend on position differences only
    torch.testing.assert_close(q2 @ k2.transpose(-1, -2), scores, atol=1e-5, rtol=1e-5)
    q3, k3, _ = block.queries_keys(a, None)
    assert not torch.allclose(q3 @ k3.transpose(-1, -2), scores)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_invariant_to_the_scale_of_queries_and_keys(qk_norm: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 12, qk_norm=qk_norm, backend=AttentionBackend.REFERENCE)
    seqs, masks, _ = padded_inputs(3, {"e": 6}, 8)
    positions = torch.arange(6.0).expand(3, -1)
    out = block(seqs["e"], masks["e"], positions)
    with torch.no_grad():
        block.qkv.weight[:16] *= 7.0  # W_q and W_k
    scaled = block(seqs["e"], masks["e"], positions)
    assert torch.allclose(scaled, out, atol=1e-5) == qk_norm


# -- SwishNorm --------------------------------------------------------------------------------------


def test_swish_norms_follow_their_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 10)
    rms = SwishNorm(10, "rms_gate_norm")
    with torch.no_grad():
        rms.norm.weight.uniform_(0.5, 2.0)
    n = _rms(x, rms.norm.weight)
    torch.testing.assert_close(rms(x), n * torch.sigmoid(n))
    xg = SwishNorm(10, "x_gate_norm", bias=True)
    with torch.no_grad():
        xg.norm.weight.uniform_(0.5, 2.0)
        xg.norm.bias.uniform_(-1.0, 1.0)
    ln = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(xg(x), x * torch.sigmoid(ln * xg.norm.weight + xg.norm.bias))
    assert SwishNorm(10, "x_gate_norm").norm.bias is None
    with pytest.raises(ValueError, match="model.lattice.swish_norm"):
        SwishNorm(10, "tanh")


def test_bias_false_means_no_bias_anywhere_and_true_adds_them() -> None:
    assert not [n for n, _ in _model(untie_domains=2).named_parameters() if n.endswith(".bias")]
    with_bias = [n for n, _ in _model(bias=True, swish_norm="x_gate_norm").named_parameters() if n.endswith(".bias")]
    assert any(".qkv." in n for n in with_bias) and any(".fmb.norm." in n for n in with_bias)


# -- bf16 -------------------------------------------------------------------------------------------


def test_bf16_autocast_forward_and_backward_are_finite() -> None:
    model = _model(untie_domains=2, num_layers=3)
    x = _inputs(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _, _ = model(**x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# -- registry and config ----------------------------------------------------------------------------

SMALL = {"dim": 8, "fmb_mlp": [16], "task_mlp": [8], "num_fmb_tokens": 4, "num_lcb_tokens": 2, "fm_rank": 4}


def test_registry_builds_lattice_with_sequences_and_trains_a_step() -> None:
    cfg = seq_config("lattice", model={"lattice": {**SMALL, "untie_domains": 2}})
    assert check_model(cfg) == [] and collect_problems(cfg) == []
    built = build_model(cfg, sparse_device="cpu")
    assert isinstance(built.dense, LatticeDense) and built.dense.events == ["click", "buy"]
    assert flops_per_example(cfg) == total(built.dense.flops())
    loss, _ = built.rec_model()(seq_batch(cfg, 8, seed=0))
    loss.backward()
    assert torch.isfinite(loss)


def test_registry_builds_lattice_without_sequences() -> None:
    cfg = tiny_config(model={"arch": "lattice", "lattice": SMALL})
    assert check_model(cfg) == [] and collect_problems(cfg) == []
    built = build_model(cfg, sparse_device="cpu")
    assert isinstance(built.dense, LatticeDense) and built.dense.events == []
    assert flops_per_example(cfg) == total(built.dense.flops())
    batch = random_batch(cfg, 4, seed=0)
    logits, _, _ = built.dense(batch.dense, built.sparse(batch.sparse))
    assert logits.shape == (4, 1)


def test_rec_model_trains_lattice_without_sequences() -> None:
    cfg = tiny_config(model={"arch": "lattice", "lattice": SMALL})
    loss, _ = build_model(cfg, sparse_device="cpu").rec_model()(random_batch(cfg, 4, seed=0))
    assert torch.isfinite(loss)


def test_without_sequences_the_domain_still_reaches_untied_layers() -> None:
    """A domain-capable arch gets ``domain=batch.domain`` on the pooled path: rows follow their group's weights."""
    cfg = tiny_config(model={"arch": "lattice", "lattice": {**SMALL, "untie_domains": 2}})
    cfg.data.features.domain = "surface"
    built = build_model(cfg, sparse_device="cpu")
    assert built.uses_domain and not built.uses_sequences
    model = built.rec_model().eval()
    batch = random_batch(cfg, 6, seed=1)
    batch.domain = torch.tensor([0, 1, 0, 1, 0, 1])
    _, (_, before, *_) = model(batch)
    with torch.no_grad():
        for name, p in model.dense.named_parameters():
            if ".groups.1." in name:
                p.add_(0.5)
    _, (_, after, *_) = model(batch)
    assert torch.equal(before[0::2], after[0::2])  # domain-0 rows: untouched
    assert not torch.allclose(before[1::2], after[1::2])  # domain-1 rows: their group's weights moved


def test_lattice_config_problems_name_their_keys() -> None:
    cfg = seq_config(
        "lattice",
        model={
            "lattice": {"dim": 10, "num_heads": 4, "fm_rank": 0, "untie_domains": 2, "task_mlp": [0], "rope": "time"}
        },
        domain="",
    )
    problems = "\n".join(check_model(cfg))
    for key in (
        "model.lattice.num_heads:",
        "model.lattice.fm_rank:",
        "model.lattice.untie_domains:",
        "model.lattice.task_mlp[0]:",
        "model.lattice.rope:",
    ):
        assert key in problems, (key, problems)
    ok = tiny_config(model={"arch": "lattice", "lattice": {"dim": 10, "num_heads": 4}})
    assert check_model(ok) == []  # heads only matter with sequences
