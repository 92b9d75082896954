"""Throughput, achieved TFLOP/s and MFU: computed here and only here.

``MFU = train FLOPs per example x examples/s per rank / peak dense FLOP/s per rank``, with the
model's analytic FLOPs (forward + exact backward, embedding lookups excluded, active experts only)
at the batches' real sequence lengths. It is ``None`` when the device's peak is unknown. The log
windows, the run's summary, its per-stage rows and the ``--profile`` table all call ``rates``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    """What ``examples`` examples worth ``train_flops`` FLOPs in ``seconds`` per rank come to."""

    examples_per_s_per_rank: float
    tflops_per_rank: float
    mfu: float | None
    """In [0, 1] on a correct peak; None when the peak is unknown."""


def rates(examples: float, train_flops: float, seconds: float, peak_tflops: float | None, ranks: int = 1) -> Rates:
    """Per-rank rates of ``ranks`` ranks that trained ``examples`` examples together.

    The examples are worth ``train_flops`` FLOPs and took ``seconds`` of wall time on each rank; the
    rates are zeros (MFU None) when ``seconds`` is 0.
    """
    if seconds <= 0 or ranks <= 0:
        return Rates(0.0, 0.0, None)
    flops_per_s = train_flops / ranks / seconds
    mfu = flops_per_s / (peak_tflops * 1e12) if peak_tflops else None
    return Rates(examples / ranks / seconds, flops_per_s / 1e12, mfu)


def embedding_bandwidth(bytes_per_example: float | None, examples_per_s_per_rank: float) -> float | None:
    """Achieved embedding-row bandwidth per rank, GB/s (1e9 bytes): rows read per example x examples/s.

    Lookups are memory traffic, not FLOPs; compare this with the device's memory bandwidth (an H100
    SXM's HBM3 moves about 3,350 GB/s), not with a FLOP peak.
    """
    if bytes_per_example is None or examples_per_s_per_rank <= 0:
        return None
    return bytes_per_example * examples_per_s_per_rank / 1e9
