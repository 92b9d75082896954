"""Staged training from ``trainer.stages`` (HiLoMoE's three stages): schedule and boundaries.

At a boundary (and again when a run resumes inside a stage) the trainer:
  1. sets which parameters train (``apply_training_stage``: experts on or off, ``requires_grad``,
     aux-loss scales),
  2. re-wraps the dense arch (DDP fixes its parameter set when built),
  3. rescales each dense optimizer group's learning rate by its role (backbone / experts / routers),
  4. rescales the tables' learning rate (``sparse_lr_scale``; 0 freezes them),
and writes a ``stage`` record to ``metrics.jsonl``. Everything a stage sets is a function of the
stage alone, so resuming mid-stage re-applies it exactly.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from recscale.configs.schema import StageConfig
from recscale.modules.hilomoe import apply_training_stage, stage_group_scales, stage_lr_scales
from recscale.sharding.apply import ParallelModel


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
