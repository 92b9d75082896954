"""``benchmarks/torchrec_speed.py``: its profile split (``trace_split.py``) counts each op's self time once, in
the right category, and the whole benchmark (recscale's loop and TorchRec's DMP step, 1 and 2 ranks) runs end
to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _trace_split():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import trace_split
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return trace_split


def _op(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid}


def test_op_split_counts_self_times_by_category(tmp_path):
    events = [
        # step 1, thread 1: linear (10) holding addmm (6); an optimizer step (8) holding a pointwise op (5)
        # and an FBGEMM op (2); a lookup (4) holding its FBGEMM kernel (3)
        _op("aten::linear", 0, 10),
        _op("aten::addmm", 1, 6),
        _op("Optimizer.step#Adagrad.step", 20, 8, cat="user_annotation"),
        _op("aten::_foreach_addcmul_", 21, 5),
        _op("fbgemm::something", 26, 2),
        _op("aten::embedding_bag_wrapper", 40, 4),
        _op("fbgemm::split_embedding_codegen_forward_cpu", 40.5, 3),
        # thread 2 (autograd): mm (7) inside a backward node (9)
        _op("AddmmBackward0", 0, 9, tid=2),
        _op("aten::mm", 1, 7, tid=2),
        {"ph": "i", "name": "marker", "ts": 3, "pid": 0, "tid": 1},  # not a duration event: ignored
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    split = _trace_split().op_split(trace, steps=1, step_ms=0.05)
    us = 1e-3  # the trace is in µs, the split in ms
    assert split["matmul"] == pytest.approx((6 + 7) * us)
    assert split["embedding_kernels"] == pytest.approx((2 + 3) * us)
    assert split["dense_optimizer"] == pytest.approx(5 * us)
    # self times: linear 10-6, embedding_bag 4-3, AddmmBackward0 9-7
    assert split["other_ops"] == pytest.approx((4 + 1 + 2) * us)
    assert split["outside_ops"] == pytest.approx(0.05 - (13 + 5 + 5 + 7) * us)
    assert split["step"] == 0.05


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.integration
def test_the_benchmark_runs_both_sides_and_recscale_at_2_ranks(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "torchrec_speed.py"), "--rounds", "1", "--steps", "6"]
    cmd += ["--batch", "512", "--no-torchrec-2", "--out", str(out)]  # TorchRec's 2-rank run: the same code
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["same_dense_parameters"] is True and result["per_rank_batch"] == 512
    (only,) = result["rounds"]
    assert "torchrec_2" not in only
    for side in ("recscale", "torchrec", "recscale_2"):
        assert only[side]["examples_per_s"] > 0 and only[side]["steps_measured"] == 3, side
        assert len(only[side]["load_before"]) == 3, side
    assert only["recscale_2"]["examples_per_s"] == pytest.approx(2 * only["recscale_2"]["examples_per_s_per_rank"])
    assert only["torchrec"]["sharding"] and set(only["torchrec"]["sharding"].values()) <= {
        "table_wise",
        "data_parallel",
    }
    assert result["speedup_median"] == pytest.approx(
        only["recscale"]["examples_per_s"] / only["torchrec"]["examples_per_s"]
    )
    assert result["machine"]["cores"] == os.cpu_count()
