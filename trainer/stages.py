"""Staged training from ``trainer.stages`` (HiLoMoE's three stages): schedule and boundaries.

At a boundary (and again when a run resumes inside a stage) the trainer:
  1. sets which parameters train (``apply_training_stage``: experts on or off, ``requires_grad``,
     aux-loss scales),
  2. re-wraps the dense arch (DDP fixes its parameter set when built),
  3. rescales each dense optimizer group's learning rate by its role (backbone / experts / routers),
  4. rescales the tables' learning rate (``sparse_lr_scale``; 0 freezes them),
and writes a ``stage`` record to ``metrics.jsonl``. Everything a stage sets is a function of the
stage alone, so resuming mid-stage re-applies it exactly.

The run's ``summary.json`` has a row per stage (``stage_rows``): its steps, FLOPs per example and
MFU, since a stage changes what runs (stage 1 without experts, stage 2 with a frozen backbone).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from recscale.configs.schema import StageConfig
from recscale.modules.hilomoe import apply_training_stage, stage_group_scales, stage_lr_scales
from recscale.sharding.apply import ParallelModel
from recscale.trainer.batch_flops import BatchFlops
from recscale.trainer.rates import rates


class StageSchedule:
    """Consecutive stages; stage i covers steps ``starts[i] + 1 .. starts[i] + steps`` at most.

    A stage with ``end_on_plateau`` may end early (``end_stage``): the later stages then start sooner,
    keeping their own lengths. The actual starts are part of a checkpoint (``state_dict``), so a resumed
    run sees the boundaries the interrupted one took.
    """

    def __init__(self, stages: list[StageConfig]) -> None:
        self.stages = stages
        self.starts = [0, *accumulate(s.steps for s in stages)][:-1]

    @property
    def total_steps(self) -> int:
        """Steps of all stages (as far as they are known: a stage that may still end early counts fully)."""
        return self.starts[-1] + self.stages[-1].steps

    def index_after(self, steps_done: int) -> int:
        """The stage the next step (after ``steps_done`` steps) belongs to."""
        return min(bisect_right(self.starts, steps_done) - 1, len(self.stages) - 1)

    def is_boundary(self, steps_done: int) -> bool:
        """True when the next step starts a new stage (not the first)."""
        return steps_done in self.starts[1:]

    def end_stage(self, steps_done: int) -> bool:
        """End the current stage after ``steps_done`` steps; False (nothing changes) in the last stage."""
        index = self.index_after(steps_done - 1)
        if index == len(self.stages) - 1:
            return False
        shift = self.starts[index + 1] - steps_done
        self.starts[index + 1 :] = [start - shift for start in self.starts[index + 1 :]]
        return True

    def state_dict(self) -> dict[str, list[int]]:
        """For checkpoints."""
        return {"starts": list(self.starts)}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        """From a checkpoint (same stages, possibly ended early)."""
        if len(state["starts"]) != len(self.stages):
            raise ValueError(
                f"trainer.stages: the checkpoint has {len(state['starts'])} stages, the config {len(self.stages)}"
            )
        self.starts = list(state["starts"])


def enter_stage(parallel: ParallelModel, stage: StageConfig) -> tuple[list[float], float]:
    """Apply ``stage`` to the model and its wrappers; return its learning-rate scales.

    The scales (per dense optimizer group, and for the tables) are applied by the loop, combined with
    any plateau decay.
    """
    apply_training_stage(parallel.dense.inner, stage)
    parallel.refresh_dense()
    return stage_group_scales(parallel.dense.param_groups(), stage), stage_lr_scales(stage)["sparse"]


def stage_rows(
    schedule: StageSchedule,
    last_step: int,
    flops: BatchFlops,
    steps_run: Mapping[int, int],
    steady_seconds: Mapping[int, float],
    world_size: int,
    peak_tflops: float | None,
) -> list[dict[str, Any]]:
    """``summary.json``'s ``stages``: one row per stage, as this process ran it.

    ``first_step`` / ``last_step``: the stage's actual steps (an early end moves the later stages),
    clipped to the run's ``last_step``; None for a stage the run ended before. ``steps_run``: the
    steps this process trained (0 for a stage that ended before a resume). FLOPs per example: the
    stage's mean over every rank's examples. Throughput and MFU: its steady steps (after warm-up,
    outside the profile window), timed on this rank like the run's own figures; None without any.
    A collective (the FLOP sums are added up over ranks): every rank calls it.

    Args:
        schedule: the run's stages, with the starts it actually took.
        last_step: the run's last step.
        flops: the run's ``BatchFlops`` (per-stage sums).
        steps_run: steps trained per stage index in this process.
        steady_seconds: seconds of the steady steps per stage index.
        world_size: ranks.
        peak_tflops: peak per rank (None: MFU unknown).
    """
    flops.flush()
    rows = []
    for index, stage in enumerate(schedule.stages):
        run = flops.stage_run[index].summed_over_ranks()
        steady = flops.stage_steady[index].summed_over_ranks()
        first = schedule.starts[index] + 1
        end = schedule.starts[index + 1] if index + 1 < len(schedule.stages) else first + stage.steps - 1
        seconds = steady_seconds.get(index, 0.0)
        rate = rates(steady.examples, steady.real_train, seconds, peak_tflops, world_size) if seconds else None
        per_example = run.per_example() if run.examples else None
        rows.append(
            {
                "stage": stage.name,
                "train": stage.train,
                "first_step": first if first <= last_step else None,  # None: the run ended before it
                "last_step": min(end, last_step) if first <= last_step else None,
                "steps_run": steps_run.get(index, 0),
                "flops_per_example": None
                if per_example is None
                else {"forward": per_example.forward, "train": per_example.train},
                "examples_per_s_per_rank": rate.examples_per_s_per_rank if rate else None,
                "tflops_per_rank": rate.tflops_per_rank if rate else None,
                "mfu": rate.mfu if rate else None,
            }
        )
    return rows
