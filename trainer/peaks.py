"""Peak dense FLOP/s of the device a rank trains on, for MFU.

GPUs: a table of vendor dense (non-sparse) peaks per dtype, matched on the device name; an unknown
GPU gets ``None`` and MFU is reported as unknown, never as a made-up number. CPUs: the peak is
measured once by a matmul probe with the threads the rank uses, and cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("recscale")

# TFLOP/s, dense. fp32 is the non-tensor-core rate; tf32 applies when TF32 matmuls are enabled.
GPU_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("GB200", {"bf16": 2500.0, "tf32": 1250.0, "fp32": 80.0}),
    ("B200", {"bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0}),
    ("H200", {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}),  # SXM, and the default H100
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2}),
]


def gpu_peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of a GPU by name (``NVIDIA H100 80GB HBM3``) for ``bf16`` / ``fp32``."""
    if dtype == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"
    for key, peaks in GPU_PEAKS_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


PROBE_VERSION = 3
"""Part of the cache key: a probe that measures differently must not read an older probe's entries.
Version 1 averaged one 1024² matmul loop, so a machine busy while it ran cached a peak up to 2x low;
version 2 probed once, unlocked, so ranks starting together on one machine probed at once (30-50x low)."""

PROBE_SIZES = (256, 512, 1024, 2048)

REPEAT_TOLERANCE = 2.0
"""A probe is run twice; results further apart than this factor are used but not cached (a busy machine)."""


def cpu_peak_tflops(dtype: str = "fp32", cache_dir: Path | None = None, ranks_per_host: int = 1) -> float:
    """Measured matmul TFLOP/s of this CPU with this process's thread count (cached per machine).

    One probe per machine at a time: ranks starting together take a file lock beside the cache, the first
    probes while the others wait (so no probe competes with another), and the others read its result.
    The probe runs twice; a result the repeat disagrees with by more than ``REPEAT_TOLERANCE`` is used
    (the faster) but not cached. Each cache entry records what it was measured under: threads, the ranks
    on the machine, when.

    ``bf16``: the faster of its bf16 and its fp32 matmuls. A CPU without bf16 matmul units (no AMX or
    AVX512-BF16) runs bf16 through a slow fallback, 1-3 GFLOP/s on the 2-core EPYC of the benchmarks
    against 75 in fp32; its hardware can still do the fp32 rate, so a bf16 run there is measured against
    that (a low MFU, and a true one), not against the fallback (which such runs exceeded: MFU > 100%).
    """
    threads = torch.get_num_threads()
    key = (
        f"{platform.processor() or platform.machine()}|{cpu_model()}|{threads}t|{dtype}|"
        f"torch{torch.__version__}|probe{PROBE_VERSION}"
    )
    cache = _cpu_peak_cache(cache_dir)
    with _probe_lock(cache):
        known = _read_cache(cache)
        value = (
            float(known[key]["tflops"]) if key in known else _probe_and_cache(cache, known, key, dtype, ranks_per_host)
        )
    if dtype == "bf16":  # a CPU without bf16 units emulates it far below its fp32 rate: that is its ceiling
        value = max(value, cpu_peak_tflops("fp32", cache_dir, ranks_per_host))
    return value


def _probe_and_cache(cache: Path, known: dict[str, Any], key: str, dtype: str, ranks_per_host: int) -> float:
    """Probe twice; cache the faster result under ``key``, with its conditions, if the two agree.

    The caller holds the probe lock.
    """
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    first, second = _matmul_probe(torch_dtype), _matmul_probe(torch_dtype)
    value, repeat = max(first, second), min(first, second)
    if value > REPEAT_TOLERANCE * repeat:
        log.warning(
            "the CPU peak probe read %.4f and %.4f TFLOP/s (something else is using the cores): using %.4f for "
            "this run, not caching it",
            first,
            second,
            value,
        )
        return value
    known[key] = {
        "tflops": value,
        "repeat_tflops": repeat,
        "threads": torch.get_num_threads(),
        "ranks_per_host": ranks_per_host,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_cache(cache, known)
    return value


@contextlib.contextmanager
def _probe_lock(cache: Path) -> Iterator[None]:
    """An exclusive lock on ``<cache>.lock`` (every process of this machine), or none where it cannot be had."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        handle = open(cache.with_name(f"{cache.name}.lock"), "a")  # noqa: SIM115 - held until the with ends
    except OSError:
        yield  # an unwritable cache directory: no lock, and no cache either
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, dict) and "tflops" in v}


def _write_cache(cache: Path, known: dict[str, Any]) -> None:
    try:
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
    except OSError:
        pass  # an unwritable cache only costs a probe next time


def _cpu_peak_cache(cache_dir: Path | None = None) -> Path:
    """The file the CPU probe's results are cached in (``~/.cache/recscale/cpu_peak.json`` by default)."""
    return (cache_dir or Path(os.path.expanduser("~/.cache/recscale"))) / "cpu_peak.json"


def _matmul_probe(dtype: torch.dtype, seconds: float = 0.6) -> float:
    """TFLOP/s of the fastest ``n x n`` matmul seen, over the sizes in ``PROBE_SIZES``.

    The peak is the best single matmul, not the mean of a loop: the probe runs once per machine and
    its result is cached, and whatever else runs meanwhile (another rank starting, a data conversion)
    only ever slows matmuls down, so the fastest one is the estimate such noise cannot drag down.
    Several sizes because few threads peak on small matrices and many threads only on large ones; the
    smallest also fits between two preemptions on an oversubscribed machine (beside four busy
    processes on 2 cores, 512² matmuls read half the peak, 256² ones all of it). A size whose one
    matmul would take more than a third of its share of ``seconds`` is skipped.

    The operands come from a private generator: the probe runs only when the cache misses, so drawing
    from torch's global one would make a run's random stream (and its result) depend on whether this
    machine had probed before.
    """
    share = seconds / len(PROBE_SIZES)
    best, last_s = 0.0, 0.0
    for n in PROBE_SIZES:
        if last_s and 8 * last_s > share / 3:  # the next size: 8x the work of this one
            break
        rate, last_s = _fastest_matmul(n, dtype, share)
        best = max(best, rate)
    return best / 1e12


def _fastest_matmul(
    n: int, dtype: torch.dtype, seconds: float, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """(FLOP/s of the fastest of repeated ``n x n`` matmuls, its seconds): at least 3, for ``seconds``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    a @ b  # warm-up: first-call allocation and packing
    fastest, iters, spent = float("inf"), 0, 0.0
    while iters < 3 or spent < seconds:
        start = clock()
        a @ b
        took = clock() - start
        fastest, iters, spent = min(fastest, took), iters + 1, spent + took
    return 2 * n**3 / fastest, fastest


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), for peaks and benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown-cpu"


def device_description(device: torch.device) -> str:
    """Human name of the device (GPU model or CPU model with threads)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def peak_source(device: torch.device, override: float) -> str:
    """Where a run's peak comes from and how to correct it, in words (for ``above_peak_warning``)."""
    if override > 0:
        return "metrics.peak_tflops: set it to the device's dense peak"
    if device.type == "cuda":
        return "recscale's table entry for this GPU: set metrics.peak_tflops to its dense peak"
    cache = _cpu_peak_cache()
    return f"this machine's CPU probe, cached in {cache}: delete that file to measure again, or set metrics.peak_tflops"


def above_peak_warning(mfu: float | None, peak: float | None, source: str, what: str = "MFU") -> str | None:
    """The warning for an MFU above 100% (None when it is not): the peak is wrong, say which and how to fix it.

    No run exceeds the device's dense peak, so an MFU above 1 means the peak divided by is too low: a
    ``metrics.peak_tflops`` set too low, a GPU whose table entry is off, or a CPU probe measured while
    something else held the cores (it is cached, so later runs inherit it).

    Args:
        mfu: the MFU (None: unknown, no warning).
        peak: the peak it divides by, TFLOP/s per rank.
        source: ``peak_source(...)``.
        what: which MFU (``MFU``, ``module 'deep' MFU``).
    """
    if mfu is None or peak is None or mfu <= 1:
        return None
    return (
        f"{what} {100 * mfu:.0f}% is above 100%: the peak it divides by ({peak:.4g} TFLOP/s per rank) is too "
        f"low. It comes from {source}"
    )


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX / AVX512-BF16, as oneDNN reports); True if unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: no warning rather than a wrong one


def slow_bf16_warning(device: torch.device, precision: str, native: bool | None = None) -> str | None:
    """The start-up warning for bf16 training on a CPU without bf16 matmul units (None otherwise).

    Torch then runs bf16 matmuls through a fallback far below the CPU's fp32 rate, so the run is slow
    for no gain; its MFU is measured against the fp32 peak (``cpu_peak_tflops``) and shows it.

    Args:
        device: the training device.
        precision: ``trainer.precision``.
        native: whether the CPU has bf16 units (default: ``cpu_has_bf16_matmul()``).
    """
    if device.type != "cpu" or precision != "bf16":
        return None
    if native if native is not None else cpu_has_bf16_matmul():
        return None
    return (
        "trainer.precision=bf16 on a CPU without bf16 matmul units (no AMX / AVX512-BF16): torch runs bf16 "
        "matmuls through a fallback far below the fp32 rate (1-3 against 75 GFLOP/s on the 2-core EPYC of "
        "recscale's benchmarks), and MFU is measured against the fp32 peak; trainer.precision=fp32 trains "
        "faster here"
    )


def peak_tflops(device: torch.device, precision: str, override: float = 0.0, ranks_per_host: int = 1) -> float | None:
    """Dense peak TFLOP/s per rank for MFU; ``override`` (config) wins; None when unknown."""
    if override > 0:
        return override
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device), precision)
    return cpu_peak_tflops(precision, ranks_per_host=ranks_per_host)
