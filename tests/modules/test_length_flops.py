"""Attention FLOPs at the real sequence lengths of a batch (``modules.flops.Lengths``).

The reference is the definition: FlopCounterMode over each example run alone, its sequences cut to
their real length (no padding), forward and backward, summed over the batch. Two stand-ins make the
reference the jagged computation itself: a windowed self-attention reads only its window's keys
(one matmul per query row), and an event-free example reads no key at all (the padded model's one
zero slot is padding); like a kernel call's, its zero output still depends on q, k and v, so the
per-example work before it (GDPA's K and V from X_sum, the seed side of HSP) gets its gradients.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from recscale.modules.attention import MaskSpec, attention
from recscale.modules.build import build_model
from recscale.modules.flops import Lengths, total
from recscale.modules.gca.model import GCASequenceDense
from recscale.modules.kunlun.model import KunlunDense
from tests.modules.seq_helpers import counted_flops, seq_config

MAX = {"click": 12, "buy": 6}

MIXES = {
    "mixed": {"click": [12, 0, 1, 7, 3], "buy": [6, 1, 0, 2, 6]},
    "ones_and_empty": {"click": [1, 0, 1], "buy": [0, 1, 0]},
    "all_max": {"click": [12, 12, 12], "buy": [6, 6, 6]},
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 1, 3, 20])
def test_band_pairs_closed_form_equals_counting_the_mask(window: int, causal: bool) -> None:
    spec = MaskSpec(window=window, causal=causal, self_attention=True)
    lengths = list(range(0, 30))
    assert Lengths(lengths).band_pairs(window, causal) == sum(spec.num_pairs(n, n) for n in lengths)
    for n in (0, 1, 2, 9):  # and against the boolean mask itself
        allowed = spec.allowed(torch.ones(1, n, dtype=torch.bool), n)
        assert Lengths([n]).band_pairs(window, causal) == int(allowed.sum())


def test_lengths_refuse_negative_and_unpaired() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Lengths([3, -1])
    with pytest.raises(ValueError, match="do not pair up"):
        Lengths([1, 2]).dot(Lengths([1]))


def _jagged_attention(q, k, v, key_valid, spec, backend=None, scale=None):  # type: ignore[no-untyped-def]
    """What a jagged kernel computes for one unpadded example: each query reads only its band's keys."""
    if k.shape[2] == 0:  # no event: nothing to read; the zeros still depend on q, k, v, as a kernel's output does
        return q * 0.0 + (k.sum() + v.sum()) * 0.0
    if not spec.self_attention or (spec.window <= 0 and not spec.causal):
        return attention(q, k, v, key_valid, spec, backend, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rows = []
    for i in range(q.shape[2]):
        lo = 0 if spec.window <= 0 else max(0, i - spec.window)
        hi = i if spec.causal else min(k.shape[2] - 1, i + spec.window)
        p = torch.softmax(q[:, :, i : i + 1] @ k[:, :, lo : hi + 1].transpose(-1, -2) * scale, dim=-1)
        rows.append(p @ v[:, :, lo : hi + 1])
    return torch.cat(rows, dim=2)


def _padded(lengths: dict[str, list[int]], dim: int, seed: int = 0) -> tuple[dict[str, Any], ...]:
    """Right-aligned padded sequences with these real lengths (garbage at padding)."""
    g = torch.Generator().manual_seed(seed)
    seqs, masks, times = {}, {}, {}
    for name, real in lengths.items():
        n = torch.tensor(real)
        slot = torch.arange(MAX[name])
        masks[name] = slot.unsqueeze(0) >= (MAX[name] - n).unsqueeze(1)
        seqs[name] = torch.randn(len(real), MAX[name], dim, generator=g)
        steps = torch.randint(1, 5000, (len(real), MAX[name]), generator=g)
        times[name] = (1_700_000_000 + torch.cumsum(steps, 1)) * masks[name]
    return seqs, masks, times


def _jagged_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention of every sequence block reads only real keys, as a jagged kernel does."""
    import recscale.modules.gca.block as gca_block
    import recscale.modules.gca.model as gca_model
    import recscale.modules.kunlun.hsp as hsp
    import recscale.modules.kunlun.swa as swa

    for module in (hsp, swa, gca_block, gca_model):
        monkeypatch.setattr(module, "attention", _jagged_attention)
    for module in (hsp, gca_block, gca_model):
        monkeypatch.setattr(module, "nonempty_keys", lambda valid: valid)


def _logits(model: torch.nn.Module, *inputs: Any) -> torch.Tensor:
    return model(*inputs)[0]


def _unpadded_flops(model: torch.nn.Module, lengths: dict[str, list[int]]) -> tuple[int, int]:
    """Σ over examples of FlopCounterMode (forward, backward) of the example alone at its real lengths."""
    seqs, masks, times = _padded(lengths, 8)
    batch = len(next(iter(lengths.values())))
    g = torch.Generator().manual_seed(1)
    dense, pooled = torch.randn(batch, 2, generator=g), torch.randn(batch, 16, generator=g)
    fwd = bwd = 0
    for i in range(batch):
        cut = {e: MAX[e] - lengths[e][i] for e in lengths}
        one_seqs = {e: seqs[e][i : i + 1, cut[e] :].clone().requires_grad_(True) for e in lengths}
        one_masks = {e: masks[e][i : i + 1, cut[e] :] for e in lengths}
        assert all(m.all() for m in one_masks.values())  # nothing but real events
        one_times = {e: times[e][i : i + 1, cut[e] :] for e in lengths}
        one_pooled = pooled[i : i + 1].clone().requires_grad_(True)  # the embeddings train
        inputs = (dense[i : i + 1], one_pooled, one_seqs, one_masks, one_times, torch.zeros(1, dtype=torch.long))
        f, b = counted_flops(functools.partial(_logits, model, *inputs))
        fwd, bwd = fwd + f, bwd + b
    return fwd, bwd


def _kunlun(**kunlun: Any) -> KunlunDense:
    base = {
        "dim": 16,
        "num_layers": 3,
        "rope": "time",
        "attention_backend": "reference",
        "events": [{"name": "click", "num_layers": 3}, {"name": "buy", "dim": 8, "num_heads": 1, "num_layers": 1}],
    }
    torch.manual_seed(0)
    dense = build_model(seq_config(model={"kunlun": {**base, **kunlun}}), sparse_device="meta").dense
    assert isinstance(dense, KunlunDense)
    return dense.train()


def _gca(**gca: Any) -> GCASequenceDense:
    base = {"dim": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 32, "attention_backend": "reference"}
    torch.manual_seed(0)
    dense = build_model(seq_config("gca_seq", model={"gca": {**base, **gca}}), sparse_device="meta").dense
    assert isinstance(dense, GCASequenceDense)
    return dense.train()


KUNLUN_VARIANTS = {
    "window_compskip": {"window": 2, "compskip": True},
    "causal_window_kv_mixing": {"window": 3, "swa_causal": True, "compskip": False, "gdpa_kv_tokens": 6},
    "full_attention": {"window": 0, "compskip": False},
}


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("variant", sorted(KUNLUN_VARIANTS))
def test_kunlun_flops_at_real_lengths_equal_unpadded_examples(
    variant: str, mix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _jagged_kernels(monkeypatch)
    model = _kunlun(**KUNLUN_VARIANTS[variant])
    lengths = MIXES[mix]
    counted = total(model.flops({e: Lengths(n) for e, n in lengths.items()}))
    assert (counted.forward, counted.backward) == _unpadded_flops(model, lengths)
    padded = total(model.flops())  # one example at max_length
    batch = len(lengths["click"])
    if mix == "all_max":
        assert counted == padded.scaled(batch)
    else:
        assert counted.train < padded.train * batch


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("gca", [{"placement": "stack", "gate": "data"}, {"variant": "baseline"}])
def test_gca_flops_at_real_lengths_equal_unpadded_examples(
    gca: dict[str, Any], mix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _jagged_kernels(monkeypatch)
    model = _gca(**gca)
    lengths = MIXES[mix]
    counted = total(model.flops({e: Lengths(n) for e, n in lengths.items()}))
    assert (counted.forward, counted.backward) == _unpadded_flops(model, lengths)
    if mix == "all_max":
        assert counted == total(model.flops()).scaled(len(lengths["click"]))


def test_a_batch_is_the_sum_of_its_examples_and_missing_events_count_at_max_length() -> None:
    model = _kunlun(window=2)
    click, buy = [5, 0, 12], [2, 6, 1]
    batch = model.flops({"click": Lengths(click), "buy": Lengths(buy)})
    one_by_one = [model.flops({"click": c, "buy": b}) for c, b in zip(click, buy)]
    assert batch == {k: sum((f[k] for f in one_by_one), type(batch[k])()) for k in batch}
    assert total(model.flops({"click": Lengths(click)})) == total(
        model.flops({"click": Lengths(click), "buy": Lengths([6, 6, 6])})
    )


def test_executed_counts_at_real_lengths_equal_the_sdpa_kernels_unpadded() -> None:
    """``executed`` at real lengths: what SDPA runs on the unpadded examples (every pair, recompute in backward)."""
    model = _kunlun(window=2, attention_backend="sdpa")
    lengths = {"click": [12, 1, 7], "buy": [6, 2, 1]}  # SDPA needs at least one key
    fwd, bwd = _unpadded_flops(model, lengths)
    executed = total(model.flops({e: Lengths(n) for e, n in lengths.items()}, executed=True))
    assert (executed.forward, executed.backward) == (fwd, bwd)
    assert total(model.flops({e: Lengths(n) for e, n in lengths.items()})).train < executed.train


def test_the_jagged_reference_computes_what_the_padded_model_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counted reference is the model's own computation (examples with events; an empty one differs
    only in what its padded zero slot adds)."""
    model = _kunlun(window=2, swa_causal=True, compskip=False).eval()
    lengths = {"click": [12, 1, 7], "buy": [6, 2, 1]}
    seqs, masks, times = _padded(lengths, 8)
    g = torch.Generator().manual_seed(1)
    dense, pooled = torch.randn(3, 2, generator=g), torch.randn(3, 16, generator=g)
    padded = model(dense, pooled, seqs, masks, times)[0]
    _jagged_kernels(monkeypatch)
    for i in range(3):
        cut = {e: MAX[e] - lengths[e][i] for e in lengths}
        one = [{e: x[e][i : i + 1, cut[e] :] for e in lengths} for x in (seqs, masks, times)]
        torch.testing.assert_close(model(dense[i : i + 1], pooled[i : i + 1], *one)[0], padded[i : i + 1])
