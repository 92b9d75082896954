"""Measuring pieces of the trainer: the per-module profile, its FLOPs mapping, embedding traffic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from recscale.configs import load_config
from recscale.configs.loader import list_presets
from recscale.modules.build import dense_flops, model_inputs
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.registry import build_dense, get_spec
from recscale.trainer.embedding_traffic import EmbeddingTraffic
from recscale.trainer.profile_groups import resolve_groups
from recscale.trainer.profiling import RANGE_PREFIX, StepProfiler, _range_hooks, add_rates, module_table
from recscale.trainer.rates import embedding_bandwidth
from tests.batches import random_batch, tiny_config

MULTITASK = {
    "quickstart+mmoe": ("quickstart", ["model.multitask.structure=mmoe"]),
    "quickstart+ple": ("quickstart", ["model.multitask.structure=ple", "model.multitask.num_levels=2"]),
    "dlrm+shared_bottom": ("dlrm_criteo", ["model.multitask.structure=shared_bottom"]),
}


@pytest.mark.parametrize("preset", list_presets() + list(MULTITASK))
def test_every_flops_key_of_every_preset_belongs_to_exactly_one_module_row(preset):
    name, overrides = MULTITASK.get(preset, (preset, []))
    cfg = load_config(name, overrides)
    with torch.device("meta"):
        dense = build_dense(get_spec(cfg.model.arch), cfg.model, model_inputs(cfg))
    keys = list(dense_flops(cfg))
    rows, unclaimed = resolve_groups(dense, keys)
    assert unclaimed == [], f"{preset}: no profile row owns {unclaimed}"
    claimed = [k for r in rows for k in r.keys]
    assert sorted(claimed) == sorted(keys)  # each key once
    named = dict(dense.named_modules())
    for r in rows:
        assert r.paths and all(p in named for p in r.paths)
        assert not any(isinstance(named[p], torch.nn.ModuleList | torch.nn.ModuleDict) for p in r.paths)


def test_module_table_attributes_forward_and_backward_including_the_first_layers_weight_gradient():
    torch.manual_seed(0)
    model = DCNv2Dense(num_dense=16, pooled_dim=64, bottom=[128, 64], deep=[256, 128], num_cross_layers=2, low_rank=32)
    breakdown = model.flops()
    rows, _ = resolve_groups(model, list(breakdown))
    assert [r.group.name for r in rows] == ["bottom", "cross", "deep", "head"]
    named = dict(model.named_modules())
    handles = [h for r in rows for p in r.paths for h in _range_hooks(named[p], RANGE_PREFIX + r.group.name)]
    dense, pooled = torch.randn(256, 16), torch.randn(256, 64, requires_grad=True)  # raw dense: no input grad
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(2):
            logits, _, _ = model(dense, pooled)
            logits.sum().backward()
        wall = time.perf_counter() - start
    for h in handles:
        h.remove()
    table = module_table(prof.events(), rows, breakdown, torch.device("cpu"), 2, wall)
    add_rates(table, 256, peak_tflops=1.0)
    by = {r["module"]: r for r in table["rows"]}
    for name in ("bottom", "cross", "deep", "head"):
        assert by[name]["forward_ms"] > 0 and by[name]["backward_ms"] > 0, name
        assert 0 < by[name]["mfu"] < 1
    assert by["bottom"]["flops_train"] == breakdown["bottom"].train  # weight gradients only
    in_rows = sum(r["forward_ms"] + r["backward_ms"] for r in table["rows"])
    assert in_rows <= table["step_ms"] + 1e-6 and table["other_ms"] == pytest.approx(table["step_ms"] - in_rows)
    assert table["unclaimed_flops_keys"] == []


def test_profile_window_is_clamped_inside_the_run(tmp_path: Path):
    model = torch.nn.Linear(2, 2)
    args = (tmp_path, 0, torch.device("cpu"), model, 8, None)
    assert StepProfiler.from_config(0, 5, *args, start_step=0, total_steps=100) is None
    p = StepProfiler.from_config(4, 5, *args, start_step=0, total_steps=100)
    assert (p.first, p.last) == (6, 9)
    short = StepProfiler.from_config(4, 5, *args, start_step=0, total_steps=7)
    assert (short.first, short.last) == (4, 7)
    resumed = StepProfiler.from_config(3, 5, *args, start_step=50, total_steps=100)
    assert (resumed.first, resumed.last) == (56, 58)


def test_profiler_writes_trace_and_table_also_when_the_run_ends_inside_its_window(tmp_path: Path):
    import json

    model = DCNv2Dense(num_dense=4, pooled_dim=8, bottom=[], deep=[16], num_cross_layers=1, low_rank=2)
    prof = StepProfiler(tmp_path / "profile", 0, torch.device("cpu"), model, 32, 1.0, first=2, last=5)
    dense, pooled = torch.randn(32, 4), torch.randn(32, 8, requires_grad=True)
    for step in range(1, 4):  # the run stops (early stopping) after step 3
        logits, _, _ = model(dense, pooled)
        logits.sum().backward()
        prof.step_done(step)
        assert prof.recording == (step >= 1)
    prof.close()
    assert not prof.recording
    table = json.loads((tmp_path / "profile" / "modules.json").read_text())
    assert (table["first_step"], table["last_step"], table["steps"]) == (2, 3, 2)
    assert [r["module"] for r in table["rows"]] == ["cross", "deep", "head"]
    assert json.loads((tmp_path / "profile" / "rank0.pt.trace.json").read_text())["traceEvents"]
    logits, _, _ = model(dense, pooled)  # the hooks are gone: no range outside the window
    assert not model.cross[0]._forward_pre_hooks


def test_embedding_traffic_counts_rows_read_per_example():
    cfg = tiny_config(
        embeddings={"dim": 8, "tables": [{"name": f"t{i}", "num_embeddings": 16, "dim": 4 * (i + 1)} for i in range(4)]}
    )
    batch = random_batch(cfg, batch_size=32, seed=0, max_ids=3)
    traffic = EmbeddingTraffic(cfg)
    lengths = batch.sparse.lengths().view(4, 32).sum(dim=1)
    expected = sum(int(n) * 4 * (i + 1) * 4 for i, n in enumerate(lengths))
    assert traffic.count(batch) == expected
    assert list(traffic.wrap(iter([batch, batch]))) == [batch, batch]
    assert traffic.take() == pytest.approx(expected / 32)
    assert traffic.take() is None and traffic.run_mean() == pytest.approx(expected / 32)
    assert embedding_bandwidth(512.0, 1e6) == pytest.approx(0.512)
    assert embedding_bandwidth(None, 1e6) is None


class _FakeTimer:
    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


class _FakeMOELayer(torch.nn.Module):
    """What DeepSpeed's MOELayer exposes: the flag, the running sums (ms) and its timers."""

    def __init__(self) -> None:
        super().__init__()
        self.wall_clock_breakdown = False
        self.time_falltoall = self.time_salltoall = 0.0
        self.timers = type("Timers", (), {"timers": {"falltoall": _FakeTimer()}})()


def test_moe_dispatch_timer_reads_and_resets_deepspeeds_alltoall_timers():
    from recscale.trainer.moe_timing import MoEDispatchTimer

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), _FakeMOELayer(), _FakeMOELayer())
    timer = MoEDispatchTimer(model, torch.device("cpu"))
    assert all(m.wall_clock_breakdown for m in model[1:])
    model[1].time_falltoall, model[1].time_salltoall, model[2].time_falltoall = 3.0, 1.0, 2.0
    assert timer.take(steps=2) == {"time/moe_dispatch_fwd": pytest.approx(0.003)}  # 6 ms over 2 steps
    assert timer.take(steps=1) == {"time/moe_dispatch_fwd": 0.0}
    assert model[1].timers.timers["falltoall"].resets == 2
    assert MoEDispatchTimer(torch.nn.Linear(2, 2), torch.device("cpu")).take(4) == {}
    gpu = MoEDispatchTimer(torch.nn.Sequential(_FakeMOELayer()), torch.device("cuda"))
    assert gpu.take(1) == {}  # timing on CUDA would synchronise every all-to-all: off
