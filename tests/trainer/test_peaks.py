"""The CPU peak probe: cached per machine, and invisible to the run's random stream."""

from __future__ import annotations

import json

import torch

from recscale.trainer.peaks import cpu_peak_tflops


def test_probe_leaves_the_global_random_stream_alone(tmp_path) -> None:
    """A first run on a machine probes, later ones read the cache: both must draw the same numbers."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    peak = cpu_peak_tflops(cache_dir=tmp_path)  # cache miss: runs the matmul probe
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    assert peak > 0


def test_probe_result_is_cached_per_machine_and_thread_count(tmp_path) -> None:
    first = cpu_peak_tflops(cache_dir=tmp_path)
    (key,) = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert f"|{torch.get_num_threads()}t|fp32|" in key
    assert cpu_peak_tflops(cache_dir=tmp_path) == first  # read back, not measured again
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary name, then renamed
