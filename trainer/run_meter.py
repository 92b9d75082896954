"""What a run measures while it trains: step time, loss windows, FLOPs, embedding traffic, MFU.

``RunMeter`` is fed once per step (``step_done``: device tensors and host counters only, no read of
a value the step computed) and read at log boundaries (``window_record``, the one host read of the
window) and at the end (``steady_rates``). Step time comes from ``StepClock`` laps: the loop laps
where it stops stepping (log boundary, evaluation, checkpoint, stage boundary) and at the end of the
warm-up steps, so every lap covers steps of one kind (warm-up or steady, one stage, profiled or not).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from torch import nn

from recscale.configs import JobConfig
from recscale.data.batch import Batch
from recscale.sharding.process_group import DistInfo
from recscale.trainer.batch_flops import BatchFlops
from recscale.trainer.embedding_traffic import EmbeddingTraffic
from recscale.trainer.metrics import memory_stats
from recscale.trainer.moe_timing import MoEDispatchTimer
from recscale.trainer.peaks import peak_source, peak_tflops
from recscale.trainer.pipeline import PhaseTimer
from recscale.trainer.rates import Rates, embedding_bandwidth, rates
from recscale.trainer.window import LogWindow, StepClock

WARMUP_STEPS = 3
"""Steps left out of the run's mean throughput (first-step set-up, pipeline fill). The mean is over
the steps themselves: evaluation, checkpoints and logging are not in it."""


class RunMeter:
    """Step time, the log window and the run's FLOP, traffic and throughput sums on one rank.

    Args:
        cfg: the job.
        info: this rank.
        dense: the unwrapped dense arch (FLOP counts, MoE timers).
        per_rank_batch: examples per rank per step.
        timer: the step driver's phase timer.
    """

    def __init__(
        self, cfg: JobConfig, info: DistInfo, dense: nn.Module, per_rank_batch: int, timer: PhaseTimer
    ) -> None:
        self.info = info
        self.per_rank_batch = per_rank_batch
        self.timer = timer
        self.peak = peak_tflops(info.device, cfg.trainer.precision, cfg.metrics.peak_tflops, info.host_ranks)
        self.peak_source = peak_source(info.device, cfg.metrics.peak_tflops)
        self.clock = StepClock(info.device)
        self.window = LogWindow()
        self.window_seconds = 0.0
        self.batch_flops = BatchFlops.for_job(cfg, dense)  # FLOPs at real sequence lengths
        self.traffic = EmbeddingTraffic(cfg)  # embedding rows read: bytes, not FLOPs
        self.moe_timer = MoEDispatchTimer(dense, info.device)
        self.steady_steps = 0  # steps after warm-up and outside a profile window, and their seconds
        self.steady_seconds = 0.0
        self.stage_steps: dict[int, int] = defaultdict(int)  # staged runs: steps run, steady seconds per stage
        self.stage_steady_seconds: dict[int, float] = defaultdict(float)
        self._unlapped = 0  # steps since the last lap, all of one kind
        self._unlapped_steady = False
        self._moe_ms = 0.0  # MoE all-to-all time of the window set aside before an evaluation
        self.managed: Any = None  # the model's ManagedIds (managed-collision tables), set by the loop

    def wrap(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The training batches, counted (sequence lengths for FLOPs, ids for traffic) as they are read."""
        return self.batch_flops.wrap(self.traffic.wrap(batches))

    def step_done(self, out: Any, steady: bool, profiled: bool) -> None:
        """Account one trained step: its ``StepOutput``, and whether it is steady or profiled."""
        self.batch_flops.step(steady, profiled=profiled)
        self.window.add(out[0], out[4])
        if self.batch_flops.stage is not None:
            self.stage_steps[self.batch_flops.stage] += 1
        if self._unlapped and steady != self._unlapped_steady:
            raise AssertionError("the loop must lap the clock before steps of another kind")
        self._unlapped += 1
        self._unlapped_steady = steady

    def lap(self) -> None:
        """Time the steps since the last lap (waits for their device work) and add them up."""
        seconds = self.clock.lap()
        if not self._unlapped:
            return
        self.window_seconds += seconds
        if self._unlapped_steady:
            self.steady_steps += self._unlapped
            self.steady_seconds += seconds
            if self.batch_flops.stage is not None:
                self.stage_steady_seconds[self.batch_flops.stage] += seconds
        self._unlapped = 0

    def resume_timing(self) -> None:
        """Steps follow again after work that is not a step (evaluation, checkpoint, logging)."""
        self.clock.restart()

    def set_aside_moe_time(self) -> None:
        """Keep the window's MoE all-to-all time so far (before work that runs MoE layers outside the steps)."""
        self._moe_ms += self.moe_timer.take_ms()

    def drop_moe_time(self) -> None:
        """Forget the MoE all-to-all time since ``set_aside_moe_time`` (evaluation's)."""
        self.moe_timer.take_ms()

    def window_record(self) -> tuple[dict[str, Any], float, Rates]:
        """The ``train`` record of the log window (reads the step values once); resets the window.

        A collective (loss, diagnostics and FLOPs are summed over ranks): every rank calls it at the
        same step, after ``lap``.
        """
        steps, seconds = self.window.steps, self.window_seconds
        world = self.info.world_size
        loss, diagnostics = self.window.read(world)
        phases = self.timer.take()
        emb_bytes = self.traffic.take()
        flops = self.batch_flops.take().summed_over_ranks()  # the window's steps, all ranks, real lengths
        rate = rates(flops.examples, flops.real_train, seconds, self.peak, world)
        self.window_seconds = 0.0
        record = {
            "loss": loss,
            "examples_per_s": rate.examples_per_s_per_rank * world,
            "examples_per_s_per_rank": rate.examples_per_s_per_rank,
            "tflops_per_rank": rate.tflops_per_rank,
            "mfu": rate.mfu,
            "step_time_s": seconds / max(steps, 1),
            **{f"time/{k}": v / max(steps, 1) for k, v in phases.items()},
            "emb/bytes_per_example": emb_bytes,
            "emb/gbytes_per_s_per_rank": embedding_bandwidth(emb_bytes, rate.examples_per_s_per_rank),
            **self._moe_record(steps),
            **(self.managed.window_record() if self.managed is not None else {}),
            **memory_stats(self.info.device),
            **diagnostics,
            **flops.record(),
        }
        return record, loss, rate

    def _moe_record(self, steps: int) -> dict[str, float]:
        """``time/moe_dispatch_fwd`` (seconds per step) of the window; empty without DeepSpeed MoE layers."""
        if not self.moe_timer.layers or steps <= 0:
            return {}
        ms, self._moe_ms = self._moe_ms + self.moe_timer.take_ms(), 0.0
        return {"time/moe_dispatch_fwd": ms / 1e3 / steps}

    def steady_rates(self) -> tuple[Rates, Rates]:
        """The run's steady steps on every rank: at real and at padded sequence lengths (a collective)."""
        self.batch_flops.flush()
        steady = self.batch_flops.steady.summed_over_ranks()
        world, seconds = self.info.world_size, self.steady_seconds
        real = rates(steady.examples, steady.real_train, seconds, self.peak, world)
        padded = rates(steady.examples, steady.padded_train, seconds, self.peak, world)
        return real, padded
