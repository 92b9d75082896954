"""Attention kernels: SDPA and FlexAttention against the plain reference (values and gradients), masks, FLOPs."""

from __future__ import annotations

import pytest
import torch

from recscale.modules.attention import (
    AttentionBackend,
    MaskSpec,
    attention,
    attention_flops,
    executed_attention_flops,
    nonempty_keys,
    rotary,
    time_positions,
)
from tests.modules.seq_helpers import counted_flops

REF, SDPA, FLEX = AttentionBackend.REFERENCE, AttentionBackend.SDPA, AttentionBackend.FLEX


def _qkv(b: int = 3, h: int = 2, q: int = 10, k: int = 10, d: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, requires_grad=True) for n in (q, k, k)]


def _valid(b: int, k: int) -> torch.Tensor:
    lengths = torch.tensor([k, 0, k // 2][:b])
    return torch.arange(k).unsqueeze(0) >= (k - lengths).unsqueeze(1)  # right-aligned, row 1 empty


SPECS = [
    MaskSpec(self_attention=True),
    MaskSpec(window=2, self_attention=True),
    MaskSpec(window=3, causal=True, self_attention=True),
    MaskSpec(causal=True, self_attention=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=["full", "window", "causal-window", "causal"])
def test_sdpa_matches_reference_values_and_gradients(spec: MaskSpec) -> None:
    valid = _valid(3, 10)
    outs, grads = [], []
    for backend in (REF, SDPA):
        q, k, v = _qkv()
        out = attention(q, k, v, valid, spec, backend)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        grads.append([t.grad for t in (q, k, v)])
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g_ref, g_sdpa in zip(*grads):
        torch.testing.assert_close(g_ref, g_sdpa, atol=1e-5, rtol=1e-5)


def test_cross_attention_over_an_empty_sequence_is_finite_and_reads_zeros() -> None:
    q, k, v = _qkv(q=4, k=6)
    valid = _valid(3, 6)
    with torch.no_grad():
        v[1] = 0.0  # the empty example's padding slots hold zeros, as SequencePadder writes them
    for backend in (REF, SDPA):
        out = attention(q, k, v, nonempty_keys(valid), MaskSpec(), backend)
        assert torch.isfinite(out).all()
        assert out[1].abs().max() == 0


def test_padding_keys_do_not_leak() -> None:
    q, k, v = _qkv()
    valid = _valid(3, 10)
    spec = MaskSpec(window=3, self_attention=True)
    out = attention(q, k, v, valid, spec, SDPA)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[~valid.unsqueeze(1).expand_as(k2[..., 0])] = 100.0
    v2[~valid.unsqueeze(1).expand_as(v2[..., 0])] = -100.0
    out2 = attention(q, k2, v2, valid, spec, SDPA)
    real = valid.unsqueeze(1).unsqueeze(-1).expand_as(out)
    torch.testing.assert_close(out[real], out2[real])


@pytest.mark.parametrize("spec", SPECS[:3], ids=["full", "window", "causal-window"])
def test_flex_forward_matches_reference_on_cpu(spec: MaskSpec) -> None:
    valid = _valid(3, 10)
    q, k, v = (t.detach() for t in _qkv())
    with torch.no_grad():
        ref = attention(q, k, v, valid, spec, REF)
        flex = attention(q, k, v, valid, spec, FLEX)
    torch.testing.assert_close(ref, flex, atol=1e-5, rtol=1e-5)


def test_flex_training_on_cpu_is_refused_with_the_config_key() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="model.kunlun.attention_backend"):
        attention(q, k, v, _valid(3, 10), MaskSpec(window=2, self_attention=True), FLEX)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: FlexAttention has no CPU backward")
def test_flex_matches_reference_values_and_gradients_on_cuda() -> None:
    valid = _valid(3, 200).cuda()
    spec = MaskSpec(window=17, self_attention=True)
    outs, grads = [], []
    for backend in (REF, FLEX):
        q, k, v = (t.detach().cuda().requires_grad_() for t in _qkv(q=200, k=200, d=16))
        out = attention(q, k, v, valid, spec, backend)
        out.square().sum().backward()
        outs.append(out)
        grads.append([t.grad for t in (q, k, v)])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-3, rtol=2e-3)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("spec", [*SPECS, MaskSpec(window=5)])
def test_pair_counts_match_the_mask(spec: MaskSpec) -> None:
    for q_len in (1, 7, 300):
        dense = spec.allowed(torch.ones(1, q_len, dtype=torch.bool), q_len)
        assert spec.num_pairs(q_len, q_len) == int(dense.sum())
        # block pairs: brute force over 128 x 128 tiles
        tiles = 0
        for q0 in range(0, q_len, 128):
            for k0 in range(0, q_len, 128):
                tile = dense[0, 0, q0 : q0 + 128, k0 : k0 + 128]
                tiles += tile.numel() if tile.any() else 0
        assert spec.num_block_pairs(q_len, q_len) == tiles


@pytest.mark.parametrize("backend", [REF, SDPA])
def test_attention_flops_match_flop_counter(backend: AttentionBackend) -> None:
    b, h, n, d = 2, 2, 24, 8
    spec = MaskSpec(window=4, self_attention=True)
    q, k, v = _qkv(b, h, n, n, d)
    fwd, bwd = counted_flops(lambda: attention(q, k, v, _valid(2, n), spec, backend))
    expect = executed_attention_flops(n, n, h * d, spec, backend)
    assert (fwd, bwd) == (expect.forward * b, expect.backward * b)
    model = attention_flops(n, n, h * d, MaskSpec(self_attention=True))
    if backend == REF:  # full attention model FLOPs == what the reference executes
        assert (model.forward * b, model.backward * b) == (fwd, bwd)


def test_rotary_scores_depend_only_on_position_differences() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    pos = torch.tensor([[3.0]]), torch.tensor([[1.0]])
    shifted = torch.tensor([[13.5]]), torch.tensor([[11.5]])
    s1 = (rotary(q, pos[0], 100.0) * rotary(k, pos[1], 100.0)).sum()
    s2 = (rotary(q, shifted[0], 100.0) * rotary(k, shifted[1], 100.0)).sum()
    torch.testing.assert_close(s1, s2)


def test_time_positions_keep_second_resolution_on_epoch_timestamps() -> None:
    t = torch.tensor([[1_700_000_000, 1_700_000_001, 1_700_000_061]])
    pos = time_positions(t, time_scale=1.0)
    torch.testing.assert_close(pos, torch.log1p(torch.tensor([[61.0, 60.0, 0.0]])))
