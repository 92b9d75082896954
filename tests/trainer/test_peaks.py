"""The CPU peak probe: cached per machine, one at a time, robust to a busy machine, invisible to the random stream."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from recscale.trainer import peaks
from recscale.trainer.peaks import (
    PROBE_VERSION,
    _fastest_matmul,
    above_peak_warning,
    cpu_peak_tflops,
    peak_source,
    slow_bf16_warning,
)


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


def test_probe_peak_is_the_fastest_matmul_so_a_busy_machine_cannot_drag_it_down() -> None:
    """Interrupted matmuls (another process on the core) are slower; the peak must come from the fastest."""
    ticks = iter([0.0, 0.5, 1.0, 1.1, 2.0, 2.9, 3.0, 3.1])  # four matmuls: 0.5 s, 0.1 s, 0.9 s, 0.1 s

    rate, seconds = _fastest_matmul(64, torch.float32, seconds=1.6, clock=lambda: next(ticks))
    assert seconds == pytest.approx(0.1)
    assert rate == pytest.approx(2 * 64**3 / 0.1)  # a mean over the loop would give 2 * 64**3 / 0.4


def test_an_older_probes_cached_peak_is_not_read(tmp_path) -> None:
    """Entries of older probe versions (a loop mean, or an unlocked single probe) are measured again."""
    path = tmp_path / "cpu_peak.json"
    key = _current_key(tmp_path)
    path.write_text(json.dumps({key.replace(f"|probe{PROBE_VERSION}", "|probe2"): 123.0, key.split("|probe")[0]: 5.0}))
    peak = cpu_peak_tflops(cache_dir=tmp_path)
    assert peak not in (123.0, 5.0)
    assert json.loads(path.read_text())[key]["tflops"] == peak


def _current_key(tmp_path) -> str:
    """This machine's cache key of the current probe version."""
    cpu_peak_tflops(cache_dir=tmp_path / "scratch")
    (key,) = json.loads((tmp_path / "scratch" / "cpu_peak.json").read_text())
    assert key.endswith(f"|probe{PROBE_VERSION}")
    return key


def test_each_entry_records_what_it_was_measured_under(tmp_path, monkeypatch) -> None:
    rates = iter([0.050, 0.040])
    monkeypatch.setattr(peaks, "_matmul_probe", lambda dtype: next(rates))
    assert cpu_peak_tflops(cache_dir=tmp_path, ranks_per_host=2) == 0.050  # the faster of the two
    (entry,) = json.loads((tmp_path / "cpu_peak.json").read_text()).values()
    assert entry["tflops"] == 0.050 and entry["repeat_tflops"] == 0.040
    assert entry["threads"] == torch.get_num_threads() and entry["ranks_per_host"] == 2 and entry["measured"]


def test_a_probe_its_repeat_disagrees_with_is_used_but_not_cached(tmp_path, monkeypatch, caplog) -> None:
    rates = iter([0.010, 0.045, 0.050, 0.048])  # the first probe ran beside something else
    monkeypatch.setattr(peaks, "_matmul_probe", lambda dtype: next(rates))
    assert cpu_peak_tflops(cache_dir=tmp_path) == 0.045
    assert "not caching it" in caplog.text and not (tmp_path / "cpu_peak.json").exists()
    assert cpu_peak_tflops(cache_dir=tmp_path) == 0.050  # probed again; these two agree and are cached
    (entry,) = json.loads((tmp_path / "cpu_peak.json").read_text()).values()
    assert entry["tflops"] == 0.050


def test_ranks_starting_together_on_one_machine_probe_one_at_a_time(tmp_path, monkeypatch) -> None:
    """The second process waits for the first one's probe and reads its result: no two probes overlap."""
    running, overlaps, probes = [0], [], []

    def probe(dtype: torch.dtype) -> float:
        running[0] += 1
        overlaps.append(running[0])
        time.sleep(0.2)
        probes.append(dtype)
        running[0] -= 1
        return 0.05

    monkeypatch.setattr(peaks, "_matmul_probe", probe)
    with ThreadPoolExecutor(4) as pool:  # each call opens the lock file anew, as separate processes do
        got = list(pool.map(lambda _: cpu_peak_tflops(cache_dir=tmp_path), range(4)))
    assert got == [0.05] * 4
    assert len(probes) == 2 and max(overlaps) == 1  # one probe and its repeat, nobody else's beside them


@pytest.mark.parametrize(
    ("device", "override", "says"),
    [
        ("cpu", 0.0, "cpu_peak.json: delete that file to measure again, or set metrics.peak_tflops"),
        ("cpu", 0.02, "metrics.peak_tflops: set it to the device's dense peak"),
        ("cuda", 0.0, "table entry for this GPU: set metrics.peak_tflops"),
    ],
)
def test_an_mfu_above_100_percent_names_the_peak_and_its_fix(device, override, says) -> None:
    source = peak_source(torch.device(device), override)
    warning = above_peak_warning(1.07, 0.0337, source, "module 'deep' MFU")
    assert warning is not None and warning.startswith("module 'deep' MFU 107% is above 100%")
    assert "0.0337 TFLOP/s per rank" in warning and says in warning
    assert above_peak_warning(0.99, 0.0337, source) is None and above_peak_warning(None, None, source) is None


def test_bf16_peak_is_never_below_the_fp32_one(tmp_path) -> None:
    """Without bf16 units a CPU emulates bf16 matmuls far below its fp32 rate: the fp32 rate is its ceiling."""
    fp32 = cpu_peak_tflops("fp32", cache_dir=tmp_path)
    assert cpu_peak_tflops("bf16", cache_dir=tmp_path) >= fp32
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # this machine: the fallback alone is far below
        assert _fastest_matmul(256, torch.bfloat16, seconds=0.05)[0] < fp32 * 1e12 / 4


def test_bf16_on_a_cpu_without_bf16_units_warns_at_start() -> None:
    cpu = torch.device("cpu")
    warning = slow_bf16_warning(cpu, "bf16", native=False)
    assert warning is not None and "without bf16 matmul units" in warning and "trainer.precision=fp32" in warning
    assert slow_bf16_warning(cpu, "bf16", native=True) is None  # AMX / AVX512-BF16: bf16 is the fast path
    assert slow_bf16_warning(cpu, "fp32", native=False) is None
    assert slow_bf16_warning(torch.device("cuda"), "bf16", native=False) is None
    # this machine as detected: a warning exactly when oneDNN reports no bf16 support
    assert (slow_bf16_warning(cpu, "bf16") is None) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
