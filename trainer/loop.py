"""The training run, in order: build -> parallelize -> (resume) -> loop -> evaluate -> checkpoint -> summary.

Each rank runs ``train(cfg, run_dir)``. Rank 0 writes the shared files (plan, metrics, summary);
every rank takes part in the collectives (planning checks, evaluation, checkpoints).

The step itself never waits for the device: what the loop keeps per step stays on the step's device
(``trainer/window.py``) and is read once per log window; the device is drained only where the loop
stops stepping anyway (log boundaries, evaluations, checkpoints, stage boundaries, the end of the
warm-up steps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from recscale.configs import JobConfig
from recscale.modules.build import build_model
from recscale.modules.flops import total
from recscale.sharding.apply import ParallelModel, parallelize
from recscale.sharding.process_group import DistInfo, init_distributed
from recscale.trainer import faults
from recscale.trainer.checkpoint import CheckpointManager, rng_state, set_rng_state
from recscale.trainer.data import TrainData, make_train_data, run_steps
from recscale.trainer.evaluations import Evaluations
from recscale.trainer.metrics import MetricsLog
from recscale.trainer.peaks import slow_bf16_warning
from recscale.trainer.pipeline import HybridTrainPipeline, PhaseTimer, PlainStepper
from recscale.trainer.profiling import StepProfiler
from recscale.trainer.progress import Progress
from recscale.trainer.run_dir import PLAN
from recscale.trainer.run_meter import WARMUP_STEPS, RunMeter
from recscale.trainer.stages import StageSchedule, enter_stage
from recscale.trainer.streaming import StreamingTrainData, streaming_summary
from recscale.trainer.summary import RunSpan, run_summary

log = logging.getLogger("recscale")


def set_determinism(cfg: JobConfig) -> None:
    """Seed everything and, when asked, make torch pick deterministic algorithms."""
    import random

    import numpy as np
    import torch

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def train(cfg: JobConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run the job on this rank; returns the summary (the same on every rank).

    Args:
        cfg: the resolved job config.
        run_dir: the run directory (``config.yaml`` already written by the launcher).
        resume: continue from the newest intact checkpoint in ``run_dir`` (if there is one).
    """
    info = init_distributed(cfg.trainer.device, cfg.sharding.plan_timeout_s, run_dir)
    set_determinism(cfg)
    t = cfg.trainer
    per_rank_batch = t.batch_size // info.world_size
    data = make_train_data(cfg, info, per_rank_batch)
    schedule = StageSchedule(t.stages) if t.stages else None
    total_steps = run_steps(cfg, data.steps_per_epoch)

    built = build_model(cfg, dense_device=info.device)
    parallel = parallelize(
        built,
        cfg.sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=per_rank_batch,
        total_steps=total_steps,
        precision=t.precision,
        aux_loss_weight=t.aux_loss_weight,
    )
    if info.is_main:
        parallel.plan.save(run_dir / PLAN)
        log.info("%s", parallel.plan.format_table())

    checkpoints = CheckpointManager(run_dir, cfg.checkpoint, info.rank, info.world_size)
    start_step, state = 0, None
    if faults.any_rank(resume):  # one restarted node makes every rank resume
        latest = checkpoints.latest_valid()
        if latest is not None:
            state = checkpoints.load(latest, parallel)
            start_step = int(state["step"])
            if state["world_size"] == info.world_size:
                set_rng_state(state["rng"])
            data.restore(state["data"], state["world_size"])
            log.info("resumed from %s at step %d", latest, start_step)
        else:
            log.info("no intact checkpoint in %s; starting from step 0", checkpoints.root)
        if info.is_main:  # before the loop opens metrics.jsonl for appending
            faults.rewind_metrics(run_dir, start_step, latest, faults.restart_attempt())
    if state is None and cfg.checkpoint.init_from:  # fine-tuning; a run's own checkpoint comes first
        written_at = checkpoints.load_weights(Path(cfg.checkpoint.init_from), parallel)
        log.info(
            "weights of %s (step %d) loaded; optimizer state, schedule and data position start fresh",
            cfg.checkpoint.init_from,
            written_at,
        )
    faults.arm(run_dir, info.rank, info.world_size, t.collective_timeout_s, start_step)
    loop = StepLoop(cfg, run_dir, info, parallel, data, checkpoints, total_steps, per_rank_batch, schedule)
    if state is not None:
        loop.load_trainer_state(state)
    return loop.run(start_step)


class StepLoop:
    """The step loop, and the cadence of logging, evaluations, checkpoints and training stages.

    Args:
        cfg: the job.
        run_dir: the run directory.
        info: this rank.
        parallel: the parallelized model.
        data: this rank's training batches.
        checkpoints: the run's checkpoints.
        total_steps: steps of the run (a stage that ends early shortens it).
        per_rank_batch: examples per rank per step.
        schedule: the training stages, or None.
    """

    def __init__(
        self,
        cfg: JobConfig,
        run_dir: Path,
        info: DistInfo,
        parallel: ParallelModel,
        data: TrainData,
        checkpoints: CheckpointManager,
        total_steps: int,
        per_rank_batch: int,
        schedule: StageSchedule | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.info = info
        self.parallel = parallel
        self.data = data
        self.checkpoints = checkpoints
        self.total_steps = total_steps
        self.schedule = schedule
        self.metrics = MetricsLog(run_dir, info.is_main, cfg.metrics.tensorboard)
        timer = PhaseTimer(info.device)
        stepper_cls = HybridTrainPipeline if cfg.trainer.pipeline else PlainStepper
        self.stepper = stepper_cls(parallel.model, parallel.updater, info.device, timer)
        self.meter = RunMeter(cfg, info, parallel.dense.inner, per_rank_batch, timer)
        self.meter.managed = parallel.model.managed_ids
        slow_bf16 = slow_bf16_warning(info.device, cfg.trainer.precision)
        if slow_bf16 and info.is_main:
            log.warning("%s", slow_bf16)
        self.progress = Progress(cfg.metrics.progress_bar, total_steps, enabled=info.is_main)
        self.evals = Evaluations(
            cfg,
            info,
            data.valid_path,
            data.steps_per_epoch,
            self.stepper.detach,
            checkpoints,
            parallel,
            self.metrics,
            self.progress,
            after_observe=self._after_observe,
            trainer_state=self._trainer_state,
        )
        self.profiler: StepProfiler | None = None
        self.stream = data if isinstance(data, StreamingTrainData) else None
        self.dense_lr_scales = [1.0] * len(parallel.dense.param_groups())  # set by training stages
        self.sparse_lr_scale = 1.0

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        """What a checkpoint restores besides the model and the data position: plateau and stage starts."""
        if state.get("plateau") is not None:
            self.evals.plateau.load_state_dict(state["plateau"])
        if self.schedule is not None and state.get("stages") is not None:  # stages that ended early stay ended
            self.schedule.load_state_dict(state["stages"])
            self.total_steps = self.schedule.total_steps

    def run(self, start_step: int) -> dict[str, Any]:
        """Train from ``start_step`` to the end; the final evaluation, checkpoint and summary."""
        t, m = self.cfg.trainer, self.cfg.metrics
        batches = self.meter.wrap(self.data.batches(start_step))
        self.profiler = StepProfiler.from_config(
            m.profile_steps,
            max(m.profile_wait_steps, WARMUP_STEPS),
            self.run_dir,
            self.info.rank,
            self.info.device,
            self.parallel.dense.inner,
            self.meter.per_rank_batch,
            self.meter.peak,
            start_step,
            self.total_steps,
            self.meter.batch_flops.profiled_breakdown,
            self.meter.peak_source,
        )
        step = start_step
        started = time.time()
        self.progress.start(start_step)
        if self.schedule is not None:
            self._enter_stage(start_step, resumed=start_step > 0)
        if self.evals.plateau.state.lr_factor != 1.0:  # a resumed run that had decayed
            self._apply_lr()
        self.meter.resume_timing()
        while step < self.total_steps and not self.evals.plateau.state.stopped:
            try:
                out = self.stepper.step(batches)
            except StopIteration:
                raise RuntimeError(
                    f"the training data ran out at step {step} of {self.total_steps}; the reader's batch count "
                    "and the number of batches it produced disagree"
                ) from None
            step += 1
            faults.after_step(step)  # progress board for hang diagnosis; injected faults (tests)
            profiled = self.profiler is not None and self.profiler.recording
            self.meter.step_done(out, steady=step > start_step + WARMUP_STEPS and not profiled, profiled=profiled)
            if not self._stops_after(step, start_step):
                continue
            self.meter.lap()  # the steps so far, their device work included
            if step % t.log_every == 0 or step == self.total_steps:
                self._log_train(step)
            if self.evals.due(step, self.total_steps):
                self.meter.set_aside_moe_time()  # evaluation runs the MoE all-to-alls too
                self.evals.scheduled(step, self.total_steps)
                self.meter.drop_moe_time()
            if self._scores_next_period(step):
                self.meter.set_aside_moe_time()
                self.evals.progressive(step, self.stream, self.stream.boundary_period(step) + 1, self.run_dir)
                self.meter.drop_moe_time()
            if self.cfg.checkpoint.every_steps and step % self.cfg.checkpoint.every_steps == 0:
                self._checkpoint(step)
            if self.schedule is not None and self.schedule.is_boundary(step):
                self._enter_stage(step)
            if self.profiler is not None:
                self.profiler.step_done(step)
            self.meter.resume_timing()
        if self.profiler is not None:
            self.profiler.close()
        self.progress.close()
        final = self.evals.final(step)
        if self.cfg.checkpoint.at_end and not (
            self.cfg.checkpoint.every_steps and step % self.cfg.checkpoint.every_steps == 0
        ):
            self._checkpoint(step)
        self.checkpoints.close()  # an asynchronous save's files complete, its directory renamed
        wall_s = time.time() - started
        stop_reason = self.evals.stop_reason() if self.evals.plateau.state.stopped else ""
        span = RunSpan(start_step, self.total_steps, stop_reason)
        extra = (
            streaming_summary(self.run_dir, self.stream.names, self.stream.skipped)
            if self.stream and self.info.is_main
            else None
        )
        parts = (self.cfg, self.run_dir, self.info, self.parallel, self.meter, self.schedule)
        summary = run_summary(*parts, step, final, wall_s, span, extra)
        self.metrics.close()
        if dist.is_initialized():
            dist.barrier()
        return summary

    def _stops_after(self, step: int, start_step: int) -> bool:
        """Whether the loop does anything but step after ``step``: then the clock laps there.

        Also at the end of the warm-up steps and at every step of a profiled run, so that each lap
        covers steps of one kind.
        """
        t = self.cfg.trainer
        return (
            step % t.log_every == 0
            or step >= self.total_steps
            or step == start_step + WARMUP_STEPS
            or self.profiler is not None
            or self.evals.due(step, self.total_steps)
            or bool(self.cfg.checkpoint.every_steps and step % self.cfg.checkpoint.every_steps == 0)
            or (self.schedule is not None and self.schedule.is_boundary(step))
            or self._scores_next_period(step)
        )

    def _scores_next_period(self, step: int) -> bool:
        """Streaming: ``step`` ends a period that another follows, which is scored before it trains."""
        if self.stream is None:
            return False
        period = self.stream.boundary_period(step)
        return 0 <= period < len(self.stream.names) - 1

    # ------------------------------------------------------------------------------- pieces

    def _log_train(self, step: int) -> None:
        """One ``train`` record: the window's loss and diagnostics over its steps and the ranks."""
        record, loss, rate = self.meter.window_record()
        record["lr"] = self.parallel.dense.lr()
        self.metrics.write("train", step, record)
        self.progress.update(step, loss, rate.examples_per_s_per_rank * self.info.world_size, rate.mfu)

    def _after_observe(self, step: int, improved: bool, newly_stopped: bool) -> None:
        """After a plateau decision: decay the rates; on a stop, end the stage (or the run) and say so."""
        if not improved:
            self._apply_lr()
        if newly_stopped:
            ended = self._end_stage_early(step, self.evals.stop_reason())
            if self.info.is_main:
                self.progress.message(f"{ended or 'early stop'} at step {step}: {self.evals.stop_reason()}")

    def _end_stage_early(self, step: int, why: str) -> str:
        """After a plateau stop: end the current stage instead of the run, where it says so.

        Returns what ended ("stage NAME"), or "" when the run stops (no stages, a stage without
        ``end_on_plateau``, or the last stage).
        """
        if self.schedule is None or step >= self.total_steps:
            return ""
        stage = self.schedule.stages[self.schedule.index_after(step - 1)]
        if not stage.end_on_plateau or not self.schedule.end_stage(step):
            return ""
        self.evals.plateau.state.stopped = False
        self.total_steps = self.schedule.total_steps
        self.progress.set_total(self.total_steps)
        self.metrics.write("stage_end", step, {"stage": stage.name, "reason": why})
        return f"stage '{stage.name}' ends"

    def _apply_lr(self) -> None:
        """Stage scales times the plateau's decay, on the dense groups and on the tables."""
        factor = self.evals.plateau.state.lr_factor
        self.parallel.dense.set_lr_scales([s * factor for s in self.dense_lr_scales])
        self.parallel.updater.set_sparse_lr_scale(self.sparse_lr_scale * factor)

    def _trainer_state(self, step: int) -> dict[str, Any]:
        """What a checkpoint saves besides the model: data position, RNG, plateau state, stage starts."""
        state = {"data": self.data.state_after(step), "rng": rng_state(), "plateau": self.evals.plateau.state_dict()}
        if self.schedule is not None:
            state["stages"] = self.schedule.state_dict()
        return state

    def _enter_stage(self, steps_done: int, resumed: bool = False) -> None:
        assert self.schedule is not None
        index = self.schedule.index_after(steps_done)
        self.meter.batch_flops.enter_stage(index)  # the steps so far count with the weights that trained in them
        stage = self.schedule.stages[index]
        fresh = steps_done == self.schedule.starts[index]
        if fresh and stage.start_from_best:  # again after a resume at this very step: the same weights
            self.evals.restore_best(steps_done, f"start of stage '{stage.name}'")
        self.dense_lr_scales, self.sparse_lr_scale = enter_stage(self.parallel, stage)
        if fresh:
            self.evals.plateau.new_stage()  # a stage starts at its own rates, without an earlier stage's decay
        self._apply_lr()
        # the stage decides what runs (experts off, frozen weights): count what it runs
        flops = total(self.meter.batch_flops.breakdown())  # x2 with model.perturbation
        first = self.schedule.starts[index] + 1
        record = {"stage": stage.name, "index": index, "train": stage.train, "first_step": first}
        record |= {"last_step": first + stage.steps - 1, "resumed_inside": resumed and not fresh}
        record |= {"flops_per_example_train": flops.train}
        self.metrics.write("stage", steps_done, record)
        if self.info.is_main:
            self.progress.message(
                f"stage {index + 1}/{len(self.schedule.stages)} '{stage.name}' ({stage.train}): "
                f"steps {first}..{first + stage.steps - 1}"
            )

    def _checkpoint(self, step: int) -> None:
        """Save a checkpoint of ``step``.

        With ``checkpoint.async_save`` its files are written while training goes on: the record then
        marks the save's start, and the directory appears once they are complete.
        """
        path = self.checkpoints.save(step, self.parallel, self._trainer_state(step))
        record = {"path": str(path), "async": bool(self.cfg.checkpoint.async_save)}
        self.metrics.write("checkpoint", step, record)
