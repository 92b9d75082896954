"""KunlunDense: padding never leaks, event personalization, CompSkip reuses the summary, FLOPs, config checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs.loader import load_config
from recscale.configs.validate import collect_problems
from recscale.modules.build import build_model, dense_flops
from recscale.modules.flops import total
from recscale.modules.kunlun.model import KunlunDense
from recscale.modules.registry import check_model
from tests.modules.seq_helpers import counted_flops, cpu_sdpa_flop_counting, padded_inputs, seq_config

LENGTHS = {"click": 12, "buy": 6}


def _kunlun(**kunlun: Any) -> KunlunDense:
    base = {
        "dim": 16,
        "num_layers": 3,
        "window": 2,
        "rope": "time",
        "events": [{"name": "click", "num_layers": 3}, {"name": "buy", "dim": 8, "num_heads": 1, "num_layers": 1}],
    }
    cfg = seq_config(model={"kunlun": {**base, **kunlun}})
    torch.manual_seed(0)
    dense = build_model(cfg, sparse_device="meta").dense
    assert isinstance(dense, KunlunDense)
    return dense.eval()


def _inputs(b: int = 4, seed: int = 0, garbage: bool = True) -> tuple[Any, ...]:
    seqs, masks, times = padded_inputs(b, LENGTHS, 8, seed=seed, garbage=garbage)
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(b, 2, generator=g), torch.randn(b, 16, generator=g), seqs, masks, times, None


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_padding_never_leaks_into_the_output(backend: str) -> None:
    model = _kunlun(attention_backend=backend)
    dense, pooled, seqs, masks, times, _ = _inputs()
    logits, _, _ = model(dense, pooled, seqs, masks, times)
    assert torch.isfinite(logits).all()  # row 1 has empty sequences
    other = {k: torch.where(masks[k].unsqueeze(-1), v, torch.randn_like(v) * 50) for k, v in seqs.items()}
    other_times = {k: torch.where(masks[k], v, torch.randint_like(v, 10**9)) for k, v in times.items()}
    logits2, _, _ = model(dense, pooled, other, masks, other_times)
    torch.testing.assert_close(logits, logits2)


def test_reference_and_sdpa_models_agree() -> None:
    ref, sdpa = _kunlun(attention_backend="reference"), _kunlun(attention_backend="sdpa")
    sdpa.load_state_dict(ref.state_dict())
    inputs = _inputs()
    torch.testing.assert_close(ref(*inputs)[0], sdpa(*inputs)[0], atol=1e-5, rtol=1e-5)


def test_events_get_their_own_width_heads_tokens_window_and_depth() -> None:
    model = _kunlun(
        events=[
            {"name": "click", "dim": 16, "num_heads": 4, "num_layers": 3, "num_summary_tokens": 3, "window": 1},
            {"name": "buy", "dim": 8, "num_heads": 1, "num_layers": 1, "num_summary_tokens": 1, "window": 0},
        ]
    )
    click, buy = model.stacks["click"], model.stacks["buy"]
    assert click.in_proj is not None and click.in_proj.out_features == 16 and buy.in_proj is None
    assert click.swa["1"].num_heads == 4 and click.swa["1"].spec.window == 1
    assert sorted(click.gdpa) == ["0", "2"] and sorted(buy.gdpa) == ["0"] and len(buy.swa) == 0
    assert click.hsp["0"].kron.z_KST.shape[-1] == 3 and buy.hsp["0"].kron.z_KST.shape[-1] == 1
    assert model.interaction[0].num_in == 4 + 3 + 1  # X_sum tokens + both summaries
    assert "layer2/buy/gdpa" not in model.flops() and "layer2/click/gdpa" in model.flops()
    logits, _, _ = model(*_inputs())
    assert logits.shape == (4, 1)


def test_compskip_reuses_the_cached_summary() -> None:
    model = _kunlun(compskip=True, num_layers=4, events=[{"name": "click"}, {"name": "buy", "num_layers": 1}])
    hsp_calls: list[str] = []
    mowe_inputs: list[torch.Tensor] = []
    for stack in model.stacks.values():
        for key, hsp in stack.hsp.items():
            hsp.register_forward_hook(lambda m, i, o, k=key: hsp_calls.append(k))
    for mowe in model.interaction:
        mowe.register_forward_hook(lambda m, i, o: mowe_inputs.append(i[0].detach()))
    model(*_inputs())
    # click: layers 0, 2 and its last layer 3 (a last layer always summarises afresh); buy: layer 0
    assert sorted(hsp_calls) == ["0", "0", "2", "3"]
    summaries = [x[:, 4:] for x in mowe_inputs]  # after the 4 X_sum tokens
    torch.testing.assert_close(summaries[1], summaries[0])  # layer 1 reuses layer 0's summaries
    assert not torch.allclose(summaries[2], summaries[1])  # layer 2 computed a fresh one
    assert not torch.allclose(summaries[3], summaries[2])  # so did the last layer
    no_skip = _kunlun(compskip=False, num_layers=4, events=[{"name": "click"}, {"name": "buy", "num_layers": 1}])
    assert (
        sum(1 for k in no_skip.flops() if k.endswith("/hsp"))
        == 5
        > sum(1 for k in model.flops() if k.endswith("/hsp"))
        == 4
    )


@pytest.mark.parametrize(
    ("batch", "kunlun"),
    [
        (3, {"attention_backend": "reference", "compskip": True}),
        (2, {"attention_backend": "sdpa", "compskip": False, "gdpa_kv_tokens": 6}),
        (4, {"attention_backend": "sdpa", "mowe": {"partition": "contiguous", "num_experts": 2}, "dense_tokens": 2}),
    ],
)
def test_analytic_flops_match_flop_counter_per_module(batch: int, kunlun: dict[str, Any]) -> None:
    """Totals forward and backward; per module forward (FlopCounterMode's backward attribution to modules
    is unreliable when modules share inputs; every block's backward is checked alone in test_kunlun_blocks)."""
    model = _kunlun(**kunlun).train()
    dense, pooled, seqs, masks, times, _ = _inputs(batch)
    pooled.requires_grad_(True)  # the embeddings train: their input gradients count
    for s in seqs.values():
        s.requires_grad_(True)
    executed = model.flops(executed=True)
    fwd, bwd = counted_flops(lambda: model(dense, pooled, seqs, masks, times)[0])
    assert (fwd, bwd) == (batch * total(executed).forward, batch * total(executed).backward)
    cpu_sdpa_flop_counting()
    with FlopCounterMode(display=False) as fc:
        model(dense, pooled, seqs, masks, times)
    counted = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    for name, stack in model.stacks.items():
        for kind in ("gdpa", "swa", "hsp"):
            for layer in getattr(stack, kind):
                got = counted[f"KunlunDense.stacks.{name}.{kind}.{layer}"]
                assert got == batch * executed[f"layer{layer}/{name}/{kind}"].forward
    for i in range(model.opts.num_layers):
        assert counted[f"KunlunDense.interaction.{i}"] == batch * executed[f"layer{i}/mowe"].forward
        assert counted[f"KunlunDense.xsum.{i}"] == batch * executed[f"layer{i}/xsum"].forward


def test_model_flops_of_swa_count_the_window_only() -> None:
    windowed, full = _kunlun(window=2, compskip=False), _kunlun(window=0, compskip=False)
    assert total(windowed.flops()).train < total(full.flops()).train
    assert total(windowed.flops(executed=True)) == total(full.flops(executed=True))  # SDPA runs every pair


def test_flops_take_real_sequence_lengths() -> None:
    model = _kunlun()
    assert total(model.flops({"click": 6, "buy": 3})).train < total(model.flops()).train


def test_preset_validates_and_its_variants_cost_less() -> None:
    cfg = load_config("kunlun_synthetic")
    assert collect_problems(cfg, world_size=2, device="cpu") == [] and check_model(cfg) == []
    off = ["model.kunlun.window=0", "model.kunlun.events.0.window=0", "model.kunlun.events.1.window=0"]
    full = total(dense_flops(load_config("kunlun_synthetic", ["model.kunlun.compskip=false", *off]))).train
    skip = total(dense_flops(load_config("kunlun_synthetic", off))).train
    swa = total(dense_flops(load_config("kunlun_synthetic", ["model.kunlun.compskip=false"]))).train
    assert 0.3 < 1 - skip / full < 0.6 and 0.15 < 1 - swa / full < 0.45


@pytest.mark.parametrize(
    ("kunlun", "message"),
    [
        ({"events": [{"name": "nope"}]}, "model.kunlun.events[0].name: no sequence named 'nope'"),
        ({"events": [{"name": "click"}]}, "model.kunlun.events: sequence 'buy' is missing"),
        ({"num_heads": 3}, "model.kunlun (event 'click').num_heads: 3 heads do not divide the width 16"),
        ({"events": [{"name": "click", "num_layers": 5}, {"name": "buy"}]}, "model.kunlun.events[0].num_layers"),
        ({"rope": "position", "num_heads": 16}, "rotary encoding needs an even head dim"),
        ({"mowe": {"num_experts": 9}}, "model.kunlun.mowe.num_experts"),
    ],
)
def test_config_problems_name_the_key(kunlun: dict[str, Any], message: str) -> None:
    cfg = seq_config(model={"kunlun": {"dim": 16, "num_layers": 2, **kunlun}})
    assert any(message in p for p in check_model(cfg)), check_model(cfg)


def test_compskip_trains_every_block_and_odd_layers_reach_the_output() -> None:
    """Every parameter of a CompSkip stack gets a gradient, and an odd (SWA-only) layer changes the logits."""
    model = _kunlun(compskip=True, num_layers=4, events=[{"name": "click"}, {"name": "buy", "num_layers": 2}])
    model(*_inputs())[0].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    swa = model.stacks["click"].swa["1"]  # click layer 1: SWA only; its summary is the reused one of layer 0
    before = model(*_inputs())[0].detach()
    with torch.no_grad():
        swa.out.weight.mul_(3.0)
    assert not torch.allclose(model(*_inputs())[0], before)  # it feeds layer 2's GDPA and fresh summary
