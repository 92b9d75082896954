"""``summary.json``: what a finished run reports (final evaluation, throughput, FLOPs, MFU, stages)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recscale.configs import JobConfig, config_hash
from recscale.sharding.apply import ParallelModel
from recscale.sharding.process_group import DistInfo
from recscale.trainer.peaks import above_peak_warning, device_description
from recscale.trainer.rates import embedding_bandwidth
from recscale.trainer.run_dir import SUMMARY, write_json
from recscale.trainer.run_meter import WARMUP_STEPS, RunMeter
from recscale.trainer.stages import StageSchedule, stage_rows
from recscale.trainer.versions import versions

log = logging.getLogger("recscale")


@dataclass(frozen=True)
class RunSpan:
    """Which part of the run this process trained, and how it ended."""

    start_step: int
    """Steps done before this process started (0, or the step it resumed at)."""
    planned_steps: int
    """Steps the run was to train in all."""
    stop_reason: str = ""
    """Why it stopped before ``planned_steps`` (early stopping); empty when it did not."""


def _earlier_sections(run_dir: Path, start_step: int) -> list[dict[str, Any]]:
    """The sections of the summary a resumed run found, up to ``start_step`` (none for a fresh run)."""
    path = run_dir / SUMMARY
    if start_step == 0 or not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    sections = earlier.get("sections") or [
        {
            "first_step": 1,
            "last_step": earlier.get("steps"),
            "examples_per_s": earlier.get("throughput", {}).get("examples_per_s"),
            "mfu": earlier.get("mfu"),
            "wall_time_s": earlier.get("wall_time_s"),
        }
    ]
    return [s for s in sections if (s.get("last_step") or 0) <= start_step]


def run_summary(
    cfg: JobConfig,
    run_dir: Path,
    info: DistInfo,
    parallel: ParallelModel,
    meter: RunMeter,
    schedule: StageSchedule | None,
    step: int,
    final: dict[str, float],
    wall_s: float,
    span: RunSpan,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's summary (the same on every rank; a collective); rank 0 writes ``summary.json``.

    Throughput and MFU are over the steady steps (after ``WARMUP_STEPS``, outside a profile window),
    FLOPs per example over every trained example of every rank, at real and at padded sequence lengths:
    the steps this process trained. ``sections`` lists every part of the run, one per process that
    trained it (a resumed or extended run keeps the earlier summary's sections before its own).
    ``extra`` adds keys (a streaming run's per-period scores, known on rank 0).
    """
    real, padded = meter.steady_rates()
    run = meter.batch_flops.run.summed_over_ranks()
    per_example, per_example_padded = run.per_example(), run.per_example(padded=True)
    dense = parallel.dense.inner
    breakdown = meter.batch_flops.breakdown()  # per trained example (x2 with model.perturbation)
    world = info.world_size
    steps = meter.steady_steps
    emb = meter.traffic.run_mean()
    summary = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "steps": step,
        "world_size": world,
        "device": info.device.type,
        "device_name": device_description(info.device),
        "ranks_per_host": info.host_ranks,
        "threads_per_rank": torch.get_num_threads() if info.device.type == "cpu" else None,
        "precision": cfg.trainer.precision,
        "batch_size": cfg.trainer.batch_size,
        "batch_size_per_rank": meter.per_rank_batch,
        "final_eval": final,
        "throughput": {
            "examples_per_s": real.examples_per_s_per_rank * world,
            "examples_per_s_per_rank": real.examples_per_s_per_rank,
            "steps_measured": steps,
            "mean_step_time_s": meter.steady_seconds / steps if steps else None,
            "excluded_warmup_steps": WARMUP_STEPS,
        },
        "flops_per_example": {"forward": per_example.forward, "train": per_example.train},
        "flops_per_example_padded": {"forward": per_example_padded.forward, "train": per_example_padded.train},
        "padding": {k.removeprefix("padding/"): v for k, v in run.record().items() if k.startswith("padding/")},
        "params": {
            "dense": sum(p.numel() for p in dense.parameters()),
            "embedding": sum(t.num_embeddings * (t.dim or cfg.embeddings.dim) for t in cfg.embeddings.tables),
        },
        "flops_breakdown": {k: {"forward": v.forward, "train": v.train} for k, v in breakdown.items()},
        "dense_parameters": sum(p.numel() for p in dense.parameters()),
        "embedding": {
            "bytes_per_example": emb,
            "gbytes_per_s_per_rank": embedding_bandwidth(emb, real.examples_per_s_per_rank),
        },
        "peak_tflops_per_rank": meter.peak,
        "tflops_per_rank": real.tflops_per_rank,
        "mfu": real.mfu,
        "mfu_padded": padded.mfu,
        "stages": None
        if schedule is None
        else stage_rows(
            schedule,
            step,
            meter.batch_flops,
            meter.stage_steps,
            meter.stage_steady_seconds,
            world,
            meter.peak,
        ),
        "wall_time_s": wall_s,
        "planned_steps": span.planned_steps,
        "ended": "early_stop" if span.stop_reason else "completed",
        "stop_reason": span.stop_reason or None,
        "config_hash": config_hash(cfg),
        "versions": versions(),
    }
    section = {
        "first_step": span.start_step + 1,
        "last_step": step,
        "examples_per_s": summary["throughput"]["examples_per_s"],
        "mfu": real.mfu,
        "wall_time_s": wall_s,
    }
    summary["sections"] = [*_earlier_sections(run_dir, span.start_step), section]
    summary.update(extra or {})
    if info.is_main:
        write_json(run_dir / SUMMARY, summary)
        warning = above_peak_warning(summary["mfu"], meter.peak, meter.peak_source)
        if warning:
            log.warning("%s", warning)
    return summary
