"""Scaling efficiency from sweep runs, and the projection model's arithmetic."""

from __future__ import annotations

import pytest

from recscale.reports.projection import project
from recscale.reports.rundata import load_run, load_study, time_split
from recscale.reports.scaling import efficiency_table, step_breakdown

from .fake_runs import write_run, write_sweep


def test_weak_scaling_efficiency_is_per_rank_throughput_against_the_smallest_size(tmp_path):
    study = load_study(write_sweep(tmp_path / "sweep"))
    rows = efficiency_table(study.runs, "weak")
    assert [r["world_size"] for r in rows] == [1, 2, 4]
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.9, 0.7])
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 1.8, 2.8])


def test_strong_scaling_efficiency_is_speedup_times_n0_over_n(tmp_path):
    runs = [
        load_run(write_run(tmp_path / "a", world_size=2, examples_per_s=2000.0)),
        load_run(write_run(tmp_path / "b", world_size=4, examples_per_s=3000.0)),
    ]
    rows = efficiency_table(runs, "strong")
    assert rows[1]["speedup"] == pytest.approx(1.5)
    assert rows[1]["efficiency"] == pytest.approx(1.5 * 2 / 4)


def test_time_split_skips_warmup_windows_and_adds_idle(tmp_path):
    run = load_run(write_run(tmp_path / "r", examples_per_s=1000.0, batch_per_rank=100))
    split = time_split(run)  # every window: 0.1 s step, phases 95% of it
    assert split["forward"] == pytest.approx(0.04) and split["idle"] == pytest.approx(0.005)
    ms = step_breakdown(run)
    assert ms["compute"] == pytest.approx(70.0) and ms["input_dist"] == pytest.approx(10.0)
    assert sum(ms.values()) == pytest.approx(100.0)


def test_time_split_leaves_out_profiled_windows(tmp_path):
    run = load_run(write_run(tmp_path / "r", profile=True))  # profiled steps 6..8: windows 6, 8 and 10 go
    from recscale.reports.rundata import steady_train_records

    assert [r["step"] for r in steady_train_records(run)] == [12, 14, 16, 18, 20]


def _inputs(**changes):
    base = {
        "measured": {"dense_step_ms": 10.0, "batch_size_per_rank": 1000},
        "gradient_bytes": 1e9,
        "bandwidth": {"intra_node_gb_per_s": 100.0, "inter_node_gb_per_s": 10.0},
        "ranks_per_node": 8,
        "topologies": [
            {"nodes": 1, "world_size": 1, "batch_size_per_rank": 1000, "embedding_step_ms": 2.0},
            {"nodes": 1, "world_size": 8, "batch_size_per_rank": 1000, "embedding_step_ms": 2.0},
            {"nodes": 2, "world_size": 16, "batch_size_per_rank": 500, "embedding_step_ms": 3.0},
        ],
    }
    return {**base, **changes}


def test_projection_uses_the_ring_allreduce_and_the_right_link():
    rows = project(_inputs())["rows"]
    assert rows[0]["allreduce_ms"] == 0.0 and rows[0]["step_ms"] == pytest.approx(12.0)
    # 8 ranks in one node: 2 * 7/8 * 1 GB / 100 GB/s = 17.5 ms
    assert rows[1]["allreduce_ms"] == pytest.approx(17.5)
    assert rows[1]["efficiency"] == pytest.approx(12.0 / (12.0 + 17.5))
    # 16 ranks over 2 nodes: inter-node link, dense scaled to the batch of 500
    assert rows[2]["allreduce_ms"] == pytest.approx(2 * 15 / 16 * 1e9 / 10e9 * 1e3)
    assert rows[2]["dense_ms"] == pytest.approx(5.0)
    assert rows[2]["examples_per_s"] == pytest.approx(16 * 500 / rows[2]["step_ms"] * 1e3)


def test_projection_overlap_and_assumptions():
    result = project(_inputs(overlap=1.0))
    assert result["rows"][1]["step_ms"] == pytest.approx(12.0)
    assert any("ring" in a for a in result["assumptions"]) and any("overlap" in a for a in result["assumptions"])
    with pytest.raises(ValueError, match="bandwidths"):
        project(_inputs(bandwidth={"intra_node_gb_per_s": 0.0, "inter_node_gb_per_s": 1.0}))
