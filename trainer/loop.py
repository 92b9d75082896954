"""The training run, in order: build -> parallelize -> (resume) -> loop -> evaluate -> checkpoint -> summary.

Each rank runs ``train(cfg, run_dir)``. Rank 0 writes the shared files (plan, metrics, summary);
every rank takes part in the collectives (planning checks, evaluation, checkpoints).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recscale.configs import JobConfig, config_hash
from recscale.modules.build import build_model, flops_per_example
from recscale.modules.flops import total
from recscale.sharding.apply import ParallelModel, parallelize
from recscale.sharding.process_group import DistInfo, host_group, init_distributed
from recscale.trainer import faults
from recscale.trainer.checkpoint import CheckpointManager, rng_state, set_rng_state
from recscale.trainer.data import TrainData, make_eval_batches, make_train_data
from recscale.trainer.embedding_traffic import EmbeddingTraffic
from recscale.trainer.evaluate import evaluate
from recscale.trainer.metrics import BatchFlops, MetricsLog, embedding_bandwidth, memory_stats, mfu
from recscale.trainer.moe_timing import MoEDispatchTimer
from recscale.trainer.peaks import (
    above_peak_warning,
    device_description,
    peak_source,
    peak_tflops,
    slow_bf16_warning,
)
from recscale.trainer.pipeline import HybridTrainPipeline, PhaseTimer, PlainStepper
from recscale.trainer.plateau import Plateau
from recscale.trainer.profiling import StepProfiler
from recscale.trainer.progress import Progress
from recscale.trainer.run_dir import PLAN, SUMMARY, write_json
from recscale.trainer.stages import StageSchedule, enter_stage, stage_rows
from recscale.trainer.versions import versions

log = logging.getLogger("recscale")

BEST = "best"
"""Name of the best-evaluation checkpoint (``trainer.early_stopping.restore_best``)."""

WARMUP_STEPS = 3
"""Steps left out of the run's mean throughput (first-step set-up, pipeline fill). The mean is over
the steps themselves: evaluation, checkpoints and logging are not in it."""


def set_determinism(cfg: JobConfig) -> None:
    """Seed everything and, when asked, make torch pick deterministic algorithms."""
    import random

    import numpy as np

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
    info = init_distributed(cfg.trainer.device, cfg.sharding.plan_timeout_s)
    set_determinism(cfg)
    t = cfg.trainer
    per_rank_batch = t.batch_size // info.world_size
    data = make_train_data(cfg, info, per_rank_batch)
    schedule = StageSchedule(t.stages) if t.stages else None
    total_steps = schedule.total_steps if schedule else (t.max_steps or data.steps_per_epoch * t.epochs)

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
    start_step = 0
    resumed_plateau, resumed_stages = None, None
    if faults.any_rank(resume):  # one restarted node makes every rank resume
        latest = checkpoints.latest_valid()
        if latest is not None:
            state = checkpoints.load(latest, parallel)
            start_step = int(state["step"])
            if state["world_size"] == info.world_size:
                set_rng_state(state["rng"])
            data.restore(state["data"], state["world_size"])
            resumed_plateau = state.get("plateau")
            resumed_stages = state.get("stages")
            log.info("resumed from %s at step %d", latest, start_step)
        else:
            log.info("no intact checkpoint in %s; starting from step 0", checkpoints.root)
        if info.is_main:
            faults.rewind_metrics(run_dir, start_step, latest, faults.restart_attempt())
    faults.arm(run_dir, info.rank, info.world_size, t.collective_timeout_s, start_step)

    loop = _Loop(cfg, run_dir, info, parallel, data, checkpoints, total_steps, per_rank_batch, schedule)
    if resumed_plateau is not None:
        loop.plateau.load_state_dict(resumed_plateau)
    if schedule is not None and resumed_stages is not None:  # stages that ended early stay ended
        schedule.load_state_dict(resumed_stages)
        loop.total_steps = schedule.total_steps
    return loop.run(start_step)


class _Loop:
    """The step loop with its logging, evaluation and checkpoint cadence."""

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
        self.schedule = schedule
        self.run_dir = run_dir
        self.info = info
        self.parallel = parallel
        self.data = data
        self.checkpoints = checkpoints
        self.total_steps = total_steps
        self.per_rank_batch = per_rank_batch
        self.metrics = MetricsLog(run_dir, info.is_main, cfg.metrics.tensorboard)
        self.timer = PhaseTimer(info.device)
        stepper_cls = HybridTrainPipeline if cfg.trainer.pipeline else PlainStepper
        self.stepper = stepper_cls(parallel.model, parallel.updater, info.device, self.timer)
        self.flops = flops_per_example(cfg)
        self.peak = peak_tflops(info.device, cfg.trainer.precision, cfg.metrics.peak_tflops)
        self.peak_source = peak_source(info.device, cfg.metrics.peak_tflops)
        slow_bf16 = slow_bf16_warning(info.device, cfg.trainer.precision)
        if slow_bf16 and info.is_main:
            log.warning("%s", slow_bf16)
        self.traffic = EmbeddingTraffic(cfg)  # embedding rows read: bytes, not FLOPs
        self.moe_timer = MoEDispatchTimer(parallel.dense.inner, info.device)
        self.profiler: StepProfiler | None = None
        self.progress = Progress(cfg.metrics.progress_bar, total_steps, enabled=info.is_main)
        self.steady_steps = 0  # steps after warm-up, the seconds they took (steps only), their FLOPs per rank
        self.steady_seconds = 0.0
        self.stage_steps: dict[int, int] = defaultdict(int)  # staged runs: steps run, steady seconds per stage
        self.stage_steady_seconds: dict[int, float] = defaultdict(float)
        self.batch_flops = BatchFlops.for_job(cfg, parallel.dense.inner)  # FLOPs at real sequence lengths
        self.last_eval: dict[str, float] = {}
        self.plateau = Plateau(cfg.trainer.early_stopping)
        self.last_full_eval: tuple[int, dict[str, float]] | None = None
        self.dense_lr_scales = [1.0] * len(parallel.dense.param_groups())  # set by training stages
        self.sparse_lr_scale = 1.0

    def run(self, start_step: int) -> dict[str, Any]:
        t = self.cfg.trainer
        batches = self.batch_flops.wrap(self.traffic.wrap(self.data.batches(start_step)))
        m = self.cfg.metrics
        self.profiler = StepProfiler.from_config(
            m.profile_steps,
            max(m.profile_wait_steps, WARMUP_STEPS),
            self.run_dir,
            self.info.rank,
            self.info.device,
            self.parallel.dense.inner,
            self.per_rank_batch,
            self.peak,
            start_step,
            self.total_steps,
            self.batch_flops.profiled_breakdown,
            self.peak_source,
        )
        step = start_step
        window_loss = torch.zeros((), dtype=torch.float64)
        window_diag: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        started = time.time()
        self.progress.start(start_step)
        if self.schedule is not None:
            self._enter_stage(start_step, resumed=start_step > 0)
        if self.plateau.state.lr_factor != 1.0:  # a resumed run that had decayed
            self._apply_lr()
        while step < self.total_steps and not self.plateau.state.stopped:
            step_start = time.perf_counter()
            try:
                out = self.stepper.step(batches)
            except StopIteration:
                raise RuntimeError(
                    f"the training data ran out at step {step} of {self.total_steps}; the reader's batch count "
                    "and the number of batches it produced disagree"
                ) from None
            step += 1
            faults.after_step(step)  # progress board for hang diagnosis; injected faults (tests)
            steady = step > start_step + WARMUP_STEPS and not (self.profiler and self.profiler.recording)
            self.batch_flops.step(steady, profiled=self.profiler is not None and self.profiler.recording)
            took = time.perf_counter() - step_start
            if steady:
                self.steady_steps += 1
                self.steady_seconds += took
            if self.batch_flops.stage is not None:
                self.stage_steps[self.batch_flops.stage] += 1
                self.stage_steady_seconds[self.batch_flops.stage] += took if steady else 0.0
            window_loss += out[0].double()
            for key, value in out[4].items():
                if value.numel() == 1:
                    window_diag[key] = window_diag.get(key, 0.0) + float(value)
            window_steps += 1
            if step % t.log_every == 0 or step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                diag = {k: v / window_steps for k, v in window_diag.items()}
                self._log_train(step, window_loss / window_steps, window_steps, elapsed, diag)
                window_loss.zero_()
                window_diag.clear()
                window_start, window_steps = time.perf_counter(), 0
            self._scheduled_evaluations(step)
            if self.cfg.checkpoint.every_steps and step % self.cfg.checkpoint.every_steps == 0:
                self._checkpoint(step)
            if self.schedule is not None and self.schedule.is_boundary(step):
                self._enter_stage(step)
            # a window's timer must not include evaluation or checkpoint time
            if window_steps == 0:
                window_start = time.perf_counter()
                self.moe_timer.take(1)  # drop the all-to-alls that evaluation ran
            if self.profiler is not None:
                self.profiler.step_done(step)
        if self.profiler is not None:
            self.profiler.close()
        self.progress.close()
        final = self._final_evaluation(step)
        if self.cfg.checkpoint.at_end and not (
            self.cfg.checkpoint.every_steps and step % self.cfg.checkpoint.every_steps == 0
        ):
            self._checkpoint(step)
        summary = self._summary(step, final, time.time() - started)
        self.metrics.close()
        if dist.is_initialized():
            dist.barrier()
        return summary

    # ------------------------------------------------------------------------------- pieces

    def _scheduled_evaluations(self, step: int) -> None:
        """Periodic and end-of-epoch evaluations after ``step``; full ones feed the plateau logic."""
        t = self.cfg.trainer
        if step >= self.total_steps:
            return  # the final evaluation follows
        result, full = None, False
        if t.eval_every and step % t.eval_every == 0:
            result, full = self._evaluate(step, t.eval_batches), t.eval_batches == 0
        if t.eval_each_epoch and step % self.data.steps_per_epoch == 0 and not full:
            result, full = self._evaluate(step, 0), True
        if full and result is not None:
            self.last_full_eval = (step, result)
            if self.plateau.active:
                self._observe(step, result)

    def _observe(self, step: int, result: dict[str, float]) -> bool:
        """Plateau bookkeeping after a full evaluation: keep the best weights, decay, stop."""
        was_stopped = self.plateau.state.stopped
        improved = self.plateau.observe(step, result)
        es = self.cfg.trainer.early_stopping
        if improved and es.restore_best:
            self.checkpoints.save(step, self.parallel, self._trainer_state(step), name=BEST)
        if not improved:
            self._apply_lr()
        record = {**self.plateau.state_dict(), "improved": improved, "metric": es.metric}
        self.metrics.write("plateau", step, record)
        if self.plateau.state.stopped and not was_stopped:
            why = f"no better {es.metric} for {es.patience} evaluations"
            best = f"best {self.plateau.state.best:.5f} at step {self.plateau.state.best_step}"
            ended = self._end_stage_early(step, why)
            if self.info.is_main:
                self.progress.message(f"{ended or 'early stop'} at step {step}: {why} ({best})")
        return improved

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
        self.plateau.state.stopped = False
        self.total_steps = self.schedule.total_steps
        self.progress.set_total(self.total_steps)
        self.metrics.write("stage_end", step, {"stage": stage.name, "reason": why})
        return f"stage '{stage.name}' ends"

    def _final_evaluation(self, step: int) -> dict[str, float]:
        """The whole validation set at the end; with ``restore_best``, of the best weights.

        An evaluation of the whole set at this very step (an epoch's end) is not repeated.
        """
        if self.last_full_eval is not None and self.last_full_eval[0] == step:
            final, improved = self.last_full_eval[1], step == self.plateau.state.best_step
            final["final"] = True
            self.metrics.write("eval", step, final)
        else:
            final = self._evaluate(step, 0, final=True)
            improved = self._observe(step, final) if self.plateau.active else False
        if self.plateau.active:
            best = self.checkpoints.root / BEST
            if self.cfg.trainer.early_stopping.restore_best and not improved and best.is_dir():
                self._restore_best(step, "end of the run")
                final = self._evaluate(step, 0, final=True)
                final["restored_from_step"] = self.plateau.state.best_step
        return final

    def _restore_best(self, step: int, when: str) -> None:
        """Load ``checkpoints/best`` (weights, optimizer state) into the model, if there is one yet."""
        best = self.checkpoints.root / BEST
        if not best.is_dir():
            log.warning("no best evaluation yet at the %s (step %d): continuing from the current weights", when, step)
            return
        self.checkpoints.load(best, self.parallel)
        self.metrics.write("restore_best", step, {"best_step": self.plateau.state.best_step, "when": when})

    def _apply_lr(self) -> None:
        """Stage scales times the plateau's decay, on the dense groups and on the tables."""
        factor = self.plateau.state.lr_factor
        self.parallel.dense.set_lr_scales([s * factor for s in self.dense_lr_scales])
        self.parallel.updater.set_sparse_lr_scale(self.sparse_lr_scale * factor)

    def _trainer_state(self, step: int) -> dict[str, Any]:
        """What a checkpoint saves besides the model: data position, RNG, plateau state, stage starts."""
        state = {"data": self.data.state_after(step), "rng": rng_state(), "plateau": self.plateau.state_dict()}
        if self.schedule is not None:
            state["stages"] = self.schedule.state_dict()
        return state

    def _log_train(
        self, step: int, mean_loss: torch.Tensor, steps: int, elapsed: float, diagnostics: dict[str, float]
    ) -> None:
        """One ``train`` record: loss and diagnostics averaged over the window and the ranks."""
        keys = sorted(diagnostics)
        values = torch.tensor([float(mean_loss)] + [diagnostics[k] for k in keys], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(values, group=host_group())
            values /= self.info.world_size
        loss = values[0]
        phases = self.timer.take()
        per_rank = self.per_rank_batch * steps / max(elapsed, 1e-9)
        emb_bytes = self.traffic.take()
        flops = self.batch_flops.take().summed_over_ranks()  # the window's steps, all ranks, real lengths
        achieved = flops.per_example().train * per_rank
        util = mfu(flops.per_example().train, per_rank, self.peak)
        record = {
            "loss": float(loss),
            "examples_per_s": per_rank * self.info.world_size,
            "examples_per_s_per_rank": per_rank,
            "tflops_per_rank": achieved / 1e12,
            "mfu": util,
            "lr": self.parallel.dense.lr(),
            "step_time_s": elapsed / steps,
            **{f"time/{k}": v / steps for k, v in phases.items()},
            "emb/bytes_per_example": emb_bytes,
            "emb/gbytes_per_s_per_rank": embedding_bandwidth(emb_bytes, per_rank),
            **self.moe_timer.take(steps),
            **memory_stats(self.info.device),
            **{k: float(v) for k, v in zip(keys, values[1:])},
            **flops.record(),
        }
        self.metrics.write("train", step, record)
        self.progress.update(step, float(loss), per_rank * self.info.world_size, util)

    def _evaluate(self, step: int, max_batches: int, final: bool = False) -> dict[str, float]:
        model = self.stepper.detach()
        batches = make_eval_batches(self.cfg, self.info, self.data.valid_path)
        result = evaluate(model, batches, self.info.device, max_batches)
        result["final"] = final
        self.metrics.write("eval", step, result)
        self.last_eval = result
        if self.info.is_main:
            self.progress.message(_format_eval(step, result))
        return result

    def _enter_stage(self, steps_done: int, resumed: bool = False) -> None:
        assert self.schedule is not None
        index = self.schedule.index_after(steps_done)
        self.batch_flops.enter_stage(index)  # the steps so far count with the weights that trained in them
        stage = self.schedule.stages[index]
        fresh = steps_done == self.schedule.starts[index]
        if fresh and stage.start_from_best:  # again after a resume at this very step: the same weights
            self._restore_best(steps_done, f"start of stage '{stage.name}'")
        self.dense_lr_scales, self.sparse_lr_scale = enter_stage(self.parallel, stage)
        if fresh:
            self.plateau.new_stage()  # a stage starts at its own rates, without an earlier stage's decay
        self._apply_lr()
        # the stage decides what runs (experts off, frozen weights): count what it runs
        self.flops = total(self.parallel.dense.inner.flops())
        first = self.schedule.starts[index] + 1
        record = {"stage": stage.name, "index": index, "train": stage.train, "first_step": first}
        record |= {"last_step": first + stage.steps - 1, "resumed_inside": resumed and not fresh}
        record |= {"flops_per_example_train": self.flops.train}
        self.metrics.write("stage", steps_done, record)
        if self.info.is_main:
            self.progress.message(
                f"stage {index + 1}/{len(self.schedule.stages)} '{stage.name}' ({stage.train}): "
                f"steps {first}..{first + stage.steps - 1}"
            )

    def _checkpoint(self, step: int) -> None:
        path = self.checkpoints.save(step, self.parallel, self._trainer_state(step))
        self.metrics.write("checkpoint", step, {"path": str(path)})

    def _summary(self, step: int, final: dict[str, float], wall_s: float) -> dict[str, Any]:
        steps, seconds = self.steady_steps, self.steady_seconds
        per_rank = self.per_rank_batch * steps / seconds if seconds else 0.0
        self.batch_flops.flush()
        # every rank's trained examples, at real and at padded lengths; per rank = the ranks' mean
        steady = self.batch_flops.steady.summed_over_ranks()
        run = self.batch_flops.run.summed_over_ranks()
        world = self.info.world_size
        achieved_tflops = steady.real_train / world / seconds / 1e12 if seconds else 0.0
        padded_tflops = steady.padded_train / world / seconds / 1e12 if seconds else 0.0
        real, padded = run.per_example(), run.per_example(padded=True)
        dense = self.parallel.dense.inner
        summary = {
            "name": self.cfg.name,
            "run_dir": str(self.run_dir),
            "steps": step,
            "world_size": self.info.world_size,
            "device": self.info.device.type,
            "device_name": device_description(self.info.device),
            "precision": self.cfg.trainer.precision,
            "batch_size": self.cfg.trainer.batch_size,
            "batch_size_per_rank": self.per_rank_batch,
            "final_eval": final,
            "throughput": {
                "examples_per_s": per_rank * self.info.world_size,
                "examples_per_s_per_rank": per_rank,
                "steps_measured": steps,
                "mean_step_time_s": seconds / steps if steps else None,
                "excluded_warmup_steps": WARMUP_STEPS,
            },
            "flops_per_example": {"forward": real.forward, "train": real.train},
            "flops_per_example_padded": {"forward": padded.forward, "train": padded.train},
            "padding": {k.removeprefix("padding/"): v for k, v in run.record().items() if k.startswith("padding/")},
            "params": {
                "dense": sum(p.numel() for p in self.parallel.dense.inner.parameters()),
                "embedding": sum(
                    t.num_embeddings * (t.dim or self.cfg.embeddings.dim) for t in self.cfg.embeddings.tables
                ),
            },
            "flops_breakdown": {k: {"forward": v.forward, "train": v.train} for k, v in dense.flops().items()},
            "dense_parameters": sum(p.numel() for p in dense.parameters()),
            "embedding": {
                "bytes_per_example": self.traffic.run_mean(),
                "gbytes_per_s_per_rank": embedding_bandwidth(self.traffic.run_mean(), per_rank),
            },
            "peak_tflops_per_rank": self.peak,
            "tflops_per_rank": achieved_tflops,
            "mfu": achieved_tflops / self.peak if self.peak else None,
            "mfu_padded": padded_tflops / self.peak if self.peak else None,
            "stages": None
            if self.schedule is None
            else stage_rows(
                self.schedule,
                step,
                self.batch_flops,
                self.stage_steps,
                self.stage_steady_seconds,
                self.info.world_size,
                self.peak,
            ),
            "wall_time_s": wall_s,
            "config_hash": config_hash(self.cfg),
            "versions": versions(),
        }
        if self.info.is_main:
            write_json(self.run_dir / SUMMARY, summary)
            warning = above_peak_warning(summary["mfu"], self.peak, self.peak_source)
            if warning:
                log.warning("%s", warning)
        return summary


def _format_eval(step: int, r: dict[str, float]) -> str:
    text = f"eval @ step {step}: auc {r['auc']:.4f}"
    if "oracle_auc" in r:
        text += f" (oracle {r['oracle_auc']:.4f}, gap {r['auc_gap']:.4f})"
    return text + f" | logloss {r['logloss']:.4f} | ne {r['ne']:.4f} | {int(r['num_examples']):,} examples"
