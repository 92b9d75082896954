"""Gated cross-attention: gate variants, the orthogonality diagnostic, padding, the gca_seq model and baselines."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recscale.configs.loader import load_config
from recscale.configs.validate import collect_problems
from recscale.modules.attention import AttentionBackend
from recscale.modules.build import build_model
from recscale.modules.flops import total
from recscale.modules.gca import GatedCrossAttention, GCASequenceDense, masked_abs_cos
from recscale.modules.gca.spec import num_params
from recscale.modules.registry import check_model
from tests.modules.seq_helpers import counted_flops, padded_inputs, seq_config

SEQS = [
    {"name": "domain_a", "ids": "hist_a", "table": "t_item", "max_length": 10},
    {"name": "domain_b", "ids": "hist_b", "table": "t_item", "max_length": 7},
]


def _xy(b: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs, masks, _ = padded_inputs(b, {"a": 10, "b": 7}, 8, garbage=False)
    return seqs["a"], masks["a"], seqs["b"], masks["b"]


def test_tanh_scalar_gate_starts_as_the_identity_and_learns() -> None:
    block = GatedCrossAttention(8, 2, gate="scalar", gate_activation="tanh", gate_init=0.0, layer_norm=False)
    x, xm, y, ym = _xy()
    out, _ = block(x, xm, y, ym)
    torch.testing.assert_close(out, x)  # tanh(0) = 0: X + 0 * X'
    out.sum().backward()
    assert block.alpha.grad is not None and block.alpha.grad.abs() > 0


@pytest.mark.parametrize("gate", ["scalar", "data"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_gate_formula(gate: str, activation: str) -> None:
    block = GatedCrossAttention(8, 2, gate=gate, gate_activation=activation, gate_init=0.3, layer_norm=True)
    x, xm, y, ym = _xy()
    captured: dict[str, torch.Tensor] = {}
    block.out.register_forward_hook(lambda m, i, o: captured.setdefault("xp", o))
    out, cos = block(x, xm, y, ym)
    xp = captured["xp"]
    act = torch.sigmoid if activation == "sigmoid" else torch.tanh
    g = act(block.alpha) if gate == "scalar" else act(block.gate(torch.cat([x, xp], -1)))  # type: ignore[misc]
    expect = F.layer_norm(x + g * xp, (8,), block.norm.weight, block.norm.bias) * xm.unsqueeze(-1)  # type: ignore[union-attr]
    torch.testing.assert_close(out, expect)
    manual = (F.cosine_similarity(x, xp, dim=-1).abs() * xm).sum() / xm.sum()
    torch.testing.assert_close(cos, manual)
    assert cos.requires_grad is False


def test_abs_cos_is_one_for_parallel_and_zero_for_orthogonal_tokens() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_abs_cos(x, -3 * x, mask) == pytest.approx(1.0)
    assert masked_abs_cos(x, x.flip(-1) * torch.tensor([1.0, -1.0]), mask) == pytest.approx(0.0)


@pytest.mark.parametrize("backend", [AttentionBackend.REFERENCE, AttentionBackend.SDPA])
def test_gca_ignores_padding_and_empty_key_sequences(backend: AttentionBackend) -> None:
    block = GatedCrossAttention(8, 2, gate="data", backend=backend)
    seqs, masks, _ = padded_inputs(3, {"a": 10, "b": 7}, 8, garbage=True)
    x, xm, y, ym = seqs["a"], masks["a"], seqs["b"], masks["b"]
    out, cos = block(x, xm, y, ym)
    assert torch.isfinite(out).all() and torch.isfinite(cos)
    y2 = torch.where(ym.unsqueeze(-1), y, torch.randn_like(y) * 30)
    out2, _ = block(x, xm, y2, ym)
    torch.testing.assert_close(out, out2)
    assert out[~xm].abs().sum() == 0
    x.requires_grad_(True)
    y.requires_grad_(True)
    fwd, bwd = counted_flops(lambda: block(x, xm, y, ym)[0])
    expect = block.flops(10, 7, executed=True)
    assert (fwd, bwd) == (3 * expect.forward, 3 * expect.backward)


def _gca_model(**gca: Any) -> GCASequenceDense:
    cfg = seq_config(arch="gca_seq", model={"gca": {"dim": 16, "num_layers": 3, "ffn_dim": 24, **gca}}, sequences=SEQS)
    torch.manual_seed(0)
    dense = build_model(cfg).dense
    assert isinstance(dense, GCASequenceDense)
    return dense


def _model_inputs(b: int = 4) -> tuple[Any, ...]:
    seqs, masks, times = padded_inputs(b, {"domain_a": 10, "domain_b": 7}, 8)
    return torch.randn(b, 2), torch.randn(b, 16), seqs, masks, times, torch.tensor([0, 1, 1, 0][:b])


@pytest.mark.parametrize(("placement", "blocks"), [("early", 2), ("stack", 6)])
def test_gca_seq_places_blocks_and_reports_abs_cos_per_domain(placement: str, blocks: int) -> None:
    model = _gca_model(placement=placement)
    assert len(model.gca) == blocks
    logits, aux, diag = model(*_model_inputs())
    assert logits.shape == (4, 1) and aux.item() == 0
    assert sorted(diag) == ["gca/abs_cos/domain_a", "gca/abs_cos/domain_b"]
    assert all(0.0 <= float(v) <= 1.0 for v in diag.values())
    one_way = _gca_model(placement=placement, bidirectional=False)
    assert sorted(one_way(*_model_inputs())[2]) == ["gca/abs_cos/domain_a"]


def test_gca_seq_padding_never_leaks() -> None:
    model = _gca_model(placement="stack", gate="data").eval()
    dense, pooled, seqs, masks, times, domain = _model_inputs()
    logits, _, diag = model(dense, pooled, seqs, masks, times, domain)
    other = {k: torch.where(masks[k].unsqueeze(-1), v, torch.randn_like(v) * 40) for k, v in seqs.items()}
    logits2, _, diag2 = model(dense, pooled, other, masks, times, domain)
    torch.testing.assert_close(logits, logits2)
    torch.testing.assert_close(diag["gca/abs_cos/domain_a"], diag2["gca/abs_cos/domain_a"])


def test_wider_baseline_matches_the_gca_parameter_count() -> None:
    gca, base, wider = _gca_model(), _gca_model(variant="baseline"), _gca_model(variant="wider_baseline")
    assert len(base.gca) == len(wider.gca) == 0
    per_unit = 2 * 3 * (16 + 1) + 2 * 3 * 16  # per FFN unit: 2 domains x 3 layers x (in + bias + out)
    assert 0 <= num_params(wider) - num_params(gca) < per_unit
    assert num_params(base) < num_params(gca)
    assert "gca/abs_cos/domain_a" not in wider(*_model_inputs())[2]


def test_gca_seq_flops_match_flop_counter() -> None:
    model = _gca_model(placement="stack", gate="data")
    dense, pooled, seqs, masks, times, domain = _model_inputs(3)
    pooled.requires_grad_(True)
    for s in seqs.values():
        s.requires_grad_(True)
    fwd, bwd = counted_flops(lambda: model(dense, pooled, seqs, masks, times, domain)[0])
    expect = total(model.flops(executed=True))
    assert (fwd, bwd) == (3 * expect.forward, 3 * expect.backward)


def test_preset_validates() -> None:
    for variant in ("gca", "wider_baseline"):
        cfg = load_config("gca_two_domain", [f"model.gca.variant={variant}"])
        assert collect_problems(cfg, world_size=2, device="cpu") == [] and check_model(cfg) == []


def test_config_problems_name_the_key() -> None:
    cfg = seq_config(arch="gca_seq", model={"gca": {"domains": ["domain_a", "nope"], "num_heads": 3}}, sequences=SEQS)
    problems = check_model(cfg)
    assert any(p.startswith("model.gca.domains[1]: no sequence named 'nope'") for p in problems)
    assert any(p.startswith("model.gca.num_heads: 3 heads do not divide") for p in problems)
