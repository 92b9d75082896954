"""Kunlun blocks: GDPA semantics, SumKronLinear, HSP, sliding-window locality, CompSkip plan, MoWE."""

from __future__ import annotations

import pytest
import torch

from recscale.modules.attention import AttentionBackend, MaskSpec, attention
from recscale.modules.flops import total
from recscale.modules.kunlun.gdpa import GDPA, GDPA_ACTIVATIONS
from recscale.modules.kunlun.hsp import HierarchicalSeedPooling, SumKronLinear
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts, MoWEOptions, partition_index
from recscale.modules.kunlun.sequence import LayerOps, layer_plan
from recscale.modules.kunlun.swa import SlidingWindowAttention
from tests.modules.seq_helpers import counted_flops, padded_inputs

torch.manual_seed(0)


def _seq(b: int = 3, length: int = 10, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    seqs, masks, _ = padded_inputs(b, {"e": length}, d, garbage=False)
    return seqs["e"], masks["e"]


@pytest.mark.parametrize("activation", sorted(GDPA_ACTIVATIONS))
def test_gdpa_is_unnormalised_activated_attention(activation: str) -> None:
    block = GDPA(8, 6, num_context_tokens=3, num_kv_tokens=0, num_heads=2, activation=activation, temperature=10.0,
                 scale=0.5, norm="post")  # fmt: skip
    s, mask = _seq()
    xsum = torch.randn(3, 3, 6)
    k = block.k_proj(xsum).view(3, 3, 2, 4).transpose(1, 2)
    v = block.v_proj(xsum).view(3, 3, 2, 4).transpose(1, 2)
    q = s.view(3, 10, 2, 4).transpose(1, 2)
    o = (GDPA_ACTIVATIONS[activation](q @ k.transpose(-1, -2) / 10.0) * 0.5) @ v  # scale after the activation
    expect = block.norm(s + block.out(o.transpose(1, 2).reshape(3, 10, 8))) * mask.unsqueeze(-1)
    torch.testing.assert_close(block(s, xsum, mask), expect)


def test_gdpa_kv_token_mixing_and_flops() -> None:
    block = GDPA(8, 6, num_context_tokens=3, num_kv_tokens=5, num_heads=2, activation="silu", temperature=12.0)
    s, mask = _seq(length=12)
    s.requires_grad_(True)
    xsum = torch.randn(3, 3, 6, requires_grad=True)
    fwd, bwd = counted_flops(lambda: block(s, xsum, mask))
    expect = block.flops(12)
    assert (fwd, bwd) == (3 * expect.forward, 3 * expect.backward)


def test_sum_kron_linear_is_a_sum_of_kronecker_maps() -> None:
    layer = SumKronLinear(in_tokens=6, out_tokens=2, in_dim=4, out_dim=5, num_terms=3)
    x = torch.randn(2, 6, 4)
    expect = sum(layer.z_KST[i].T @ x @ layer.w_KED[i] for i in range(3)) + layer.bias
    torch.testing.assert_close(layer(x), expect)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (6 * 2 + 4 * 5) + 5


@pytest.mark.parametrize("backend", [AttentionBackend.REFERENCE, AttentionBackend.SDPA])
def test_hsp_ignores_padding_and_survives_empty_sequences(backend: AttentionBackend) -> None:
    hsp = HierarchicalSeedPooling(8, 6, num_seeds=5, num_tokens=2, num_heads=2, num_terms=2, backend=backend)
    seqs, masks, _ = padded_inputs(3, {"e": 10}, 8, garbage=False)
    s, mask = seqs["e"], masks["e"]
    out = hsp(s, mask)
    assert out.shape == (3, 2, 6) and torch.isfinite(out).all()
    s2 = s.clone()
    s2[~mask] = 7.0  # garbage at padding (row 1 has no event at all) must not change anything
    torch.testing.assert_close(out, hsp(s2, mask))
    s.requires_grad_(True)
    fwd, bwd = counted_flops(lambda: hsp(s, mask))
    expect = hsp.flops(10, executed=True)
    assert (fwd, bwd) == (3 * expect.forward, 3 * expect.backward)


def test_sliding_window_output_depends_only_on_the_window() -> None:
    swa = SlidingWindowAttention(8, 2, window=2, backend=AttentionBackend.SDPA)
    s = torch.randn(1, 12, 8)
    mask = torch.ones(1, 12, dtype=torch.bool)
    s2 = s.clone()
    s2[0, 0] += 5.0  # position 0 is outside the window of positions >= 3
    out, out2 = swa(s, mask), swa(s2, mask)
    torch.testing.assert_close(out[0, 3:], out2[0, 3:])
    assert not torch.allclose(out[0, :3], out2[0, :3])


def test_sliding_window_with_rote_depends_on_time_gaps_only() -> None:
    swa = SlidingWindowAttention(8, 2, window=3, rope=True, rope_base=100.0)
    s = torch.randn(1, 6, 8)
    mask = torch.ones(1, 6, dtype=torch.bool)
    pos = torch.log1p(torch.tensor([[50.0, 40.0, 30.0, 3.0, 1.0, 0.0]]))
    torch.testing.assert_close(swa(s, mask, pos), swa(s, mask, pos + 4.0))
    assert not torch.allclose(swa(s, mask, pos), swa(s, mask, pos * 2.0))


def test_swa_flops_count_window_pairs_and_executed_pairs() -> None:
    swa = SlidingWindowAttention(8, 2, window=2, backend=AttentionBackend.SDPA)
    s, mask = _seq(length=16)
    s.requires_grad_(True)
    fwd, bwd = counted_flops(lambda: swa(s, mask))
    executed = swa.flops(16, executed=True)
    assert (fwd, bwd) == (3 * executed.forward, 3 * executed.backward)
    model = swa.flops(16)
    pairs = MaskSpec(window=2).num_pairs(16, 16)
    assert executed.forward - model.forward == 2 * 2 * (16 * 16 - pairs) * 8


def test_compskip_plan_alternates() -> None:
    full, skip = LayerOps(True, True, True), layer_plan(4, compskip=True)
    assert layer_plan(3, compskip=False) == [full] * 3
    even, odd, last = LayerOps(True, False, True), LayerOps(False, True, False), LayerOps(False, True, True)
    assert skip == [even, odd, even, last]  # a last odd layer summarises afresh: its SWA output must reach something
    assert layer_plan(3, compskip=True) == [even, odd, even]


@pytest.mark.parametrize("partition", ["strided", "contiguous"])
def test_mowe_partitions_tokens_among_experts(partition: str) -> None:
    opts = MoWEOptions(num_experts=3, partition=partition, fm_rank=2, fmb_mlp=[8])
    mowe = MixtureOfWukongExperts(num_in=8, num_out=7, dim=4, opts=opts)
    index = partition_index(8, 3, partition)
    assert sorted(i for idx in index for i in idx) == list(range(8))
    assert mowe.out_sizes == [3, 2, 2]
    x = torch.randn(5, 8, 4, requires_grad=True)
    y, aux, diag = mowe(x)
    assert y.shape == (5, 7, 4) and aux.item() == 0 and diag == {}
    # expert 0's output tokens depend only on expert 0's input tokens
    y[:, :3].sum().backward()
    assert x.grad is not None
    touched = sorted(int(i) for i in torch.nonzero(x.grad.abs().sum((0, 2))).flatten())
    assert touched == index[0]
    fwd, bwd = counted_flops(lambda: mowe(x)[0])
    assert (fwd, bwd) == (5 * mowe.flops().forward, 5 * mowe.flops().backward)


def test_routed_mowe_mixes_top_k_experts_with_a_balance_loss() -> None:
    opts = MoWEOptions(num_experts=4, partition="routed", top_k=2, fm_rank=2, fmb_mlp=[8])
    mowe = MixtureOfWukongExperts(num_in=6, num_out=5, dim=4, opts=opts)
    x = torch.randn(16, 6, 4, requires_grad=True)
    y, aux, diag = mowe(x)
    assert y.shape == (16, 5, 4) and aux.item() > 0
    assert sum(float(v) for v in diag.values()) == pytest.approx(1.0)
    (y.sum() + aux).backward()
    assert mowe.router is not None and mowe.router.weight.grad is not None
    one = total(mowe.experts[0][0].flops())
    assert mowe.flops().forward == 2 * one.forward + 2 * 4 * 4


def test_mowe_refuses_more_experts_than_tokens() -> None:
    with pytest.raises(ValueError, match="model.kunlun.mowe.num_experts"):
        MixtureOfWukongExperts(num_in=2, num_out=8, dim=4, opts=MoWEOptions(num_experts=3))


def test_reference_attention_is_the_softmax_formula() -> None:
    q, k, v = (torch.randn(1, 1, 4, 2) for _ in range(3))
    out = attention(q, k, v, torch.ones(1, 4, dtype=torch.bool), MaskSpec(), AttentionBackend.REFERENCE, scale=1.0)
    torch.testing.assert_close(out, torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
