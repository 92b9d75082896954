"""When a run evaluates, and what follows a full evaluation: plateau decay, early stop, the best weights.

Periodic (``trainer.eval_every``) and end-of-epoch evaluations run between steps; a full one (the
whole validation set) feeds the plateau logic (``trainer.early_stopping``): a new best is saved as
``checkpoints/best`` when ``restore_best`` is on, no improvement decays the learning rates, and
``patience`` evaluations without improvement end the run, or only the current training stage when it
says ``end_on_plateau``. The final evaluation covers the whole set, of the best weights when asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig
from recscale.sharding.process_group import DistInfo
from recscale.trainer.checkpoint import CheckpointManager
from recscale.trainer.data import make_eval_batches, pinned
from recscale.trainer.evaluate import evaluate
from recscale.trainer.metrics import MetricsLog
from recscale.trainer.plateau import Plateau
from recscale.trainer.progress import Progress
from recscale.trainer.streaming import (
    StreamingTrainData,
    progressive_record,
    task_names,
    write_predictions,
    write_predictions_index,
)
from recscale.trainer.task_metrics import format_metrics

log = logging.getLogger("recscale")

BEST = "best"
"""Name of the best-evaluation checkpoint (``trainer.early_stopping.restore_best``)."""


class Evaluations:
    """The run's evaluations and the plateau decisions taken on them.

    Args:
        cfg: the job.
        info: this rank.
        valid_path: the validation data.
        steps_per_epoch: training steps per epoch (end-of-epoch evaluations).
        model_for_eval: gives the model with its own forwards (the pipeline detached).
        checkpoints: the run's checkpoints (``best``).
        parallel: the parallel model checkpoints save and load.
        metrics: where ``eval`` / ``plateau`` records go.
        progress: rank 0's console.
        after_observe: called after each plateau decision with ``(step, improved, newly_stopped)``
            (the loop decays the learning rates, ends a stage or the run).
        trainer_state: what a checkpoint saves besides the model (for ``best``).
    """

    def __init__(
        self,
        cfg: JobConfig,
        info: DistInfo,
        valid_path: str,
        steps_per_epoch: int,
        model_for_eval: Callable[[], Any],
        checkpoints: CheckpointManager,
        parallel: Any,
        metrics: MetricsLog,
        progress: Progress,
        after_observe: Callable[[int, bool, bool], None],
        trainer_state: Callable[[int], dict[str, Any]],
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.valid_path = valid_path
        self.steps_per_epoch = steps_per_epoch
        self.model_for_eval = model_for_eval
        self.checkpoints = checkpoints
        self.parallel = parallel
        self.metrics = metrics
        self.progress = progress
        self.after_observe = after_observe
        self.trainer_state = trainer_state
        self.plateau = Plateau(cfg.trainer.early_stopping)
        self.last_full: tuple[int, dict[str, float]] | None = None

    @property
    def best_dir(self) -> Path:
        """``checkpoints/best``."""
        return self.checkpoints.root / BEST

    def due(self, step: int, total_steps: int) -> bool:
        """Whether an evaluation runs after ``step`` (not after the last one: the final evaluation follows)."""
        t = self.cfg.trainer
        if step >= total_steps:
            return False
        return bool(t.eval_every and step % t.eval_every == 0) or bool(
            t.eval_each_epoch and step % self.steps_per_epoch == 0
        )

    def scheduled(self, step: int, total_steps: int) -> None:
        """The periodic and end-of-epoch evaluations due after ``step``."""
        if not self.due(step, total_steps):
            return
        t = self.cfg.trainer
        result, full = None, False
        if t.eval_every and step % t.eval_every == 0:
            result, full = self.run(step, t.eval_batches), t.eval_batches == 0
        if t.eval_each_epoch and step % self.steps_per_epoch == 0 and not full:
            result, full = self.run(step, 0), True
        if full and result is not None:
            self.last_full = (step, result)
            if self.plateau.active:
                self.observe(step, result)

    def observe(self, step: int, result: dict[str, float]) -> bool:
        """Plateau bookkeeping after a full evaluation; saves ``best`` on a new best. Returns improved."""
        was_stopped = self.plateau.state.stopped
        improved = self.plateau.observe(step, result)
        es = self.cfg.trainer.early_stopping
        if improved and es.restore_best:
            self.checkpoints.save(step, self.parallel, self.trainer_state(step), name=BEST)
        record = {**self.plateau.state_dict(), "improved": improved, "metric": es.metric}
        self.metrics.write("plateau", step, record)
        self.after_observe(step, improved, self.plateau.state.stopped and not was_stopped)
        return improved

    def stop_reason(self) -> str:
        """Why the plateau logic stopped: the metric, the patience and the best so far."""
        es, state = self.cfg.trainer.early_stopping, self.plateau.state
        return f"no better {es.metric} for {es.patience} evaluations (best {state.best:.5f} at step {state.best_step})"

    def final(self, step: int) -> dict[str, float]:
        """The whole validation set at the end; with ``restore_best``, of the best weights.

        An evaluation of the whole set at this very step (an epoch's end) is not repeated.
        """
        if self.last_full is not None and self.last_full[0] == step:
            final, improved = self.last_full[1], step == self.plateau.state.best_step
            final["final"] = True
            self.metrics.write("eval", step, final)
        else:
            final = self.run(step, 0, final=True)
            improved = self.observe(step, final) if self.plateau.active else False
        if self.plateau.active:
            if self.cfg.trainer.early_stopping.restore_best and not improved and self.best_dir.is_dir():
                self.restore_best(step, "end of the run")
                final = self.run(step, 0, final=True)
                final["restored_from_step"] = self.plateau.state.best_step
        return final

    def restore_best(self, step: int, when: str) -> None:
        """Load ``checkpoints/best`` (weights, optimizer state) into the model, if there is one yet."""
        if not self.best_dir.is_dir():
            log.warning("no best evaluation yet at the %s (step %d): continuing from the current weights", when, step)
            return
        self.checkpoints.load(self.best_dir, self.parallel)
        self.metrics.write("restore_best", step, {"best_step": self.plateau.state.best_step, "when": when})

    def progressive(self, step: int, stream: StreamingTrainData, period: int, run_dir: Path) -> dict[str, Any]:
        """Score all of ``period`` before training on it (``trainer.streaming``); a ``progressive`` record.

        With ``trainer.streaming.predictions`` each rank also keeps its logits of the period.
        """
        name = stream.names[period]
        batches = pinned(make_eval_batches(self.cfg, self.info, str(stream.readers[period].path)), self.info.device)
        kept: list[Any] = []
        model = self.model_for_eval()
        result = evaluate(model, batches, self.info.device, 0, self.cfg.data.features.domain_names, keep_logits=kept)
        record = progressive_record(name, period, result)
        self.metrics.write("progressive", step, record)
        if self.cfg.trainer.streaming.predictions:
            columns = task_names(model, kept[0].shape[1])
            write_predictions(run_dir, name, self.info.rank, kept[0], columns)
            if self.info.is_main:
                write_predictions_index(run_dir, stream.names[1 : period + 1], self.info.world_size, columns)
        if self.info.is_main:
            self.progress.message(f"period {name} (before training on it){format_metrics(result)}")
        return record

    def run(self, step: int, max_batches: int, final: bool = False) -> dict[str, float]:
        """One evaluation (``max_batches`` 0: the whole set), recorded and shown."""
        batches = pinned(make_eval_batches(self.cfg, self.info, self.valid_path), self.info.device)
        result = evaluate(
            self.model_for_eval(), batches, self.info.device, max_batches, self.cfg.data.features.domain_names
        )
        result["final"] = final
        self.metrics.write("eval", step, result)
        if self.info.is_main:
            self.progress.message(_format_eval(step, result))
        return result


def _format_eval(step: int, r: dict[str, float]) -> str:
    """One console line: the (task-weighted) headline metrics and the examples."""
    return f"eval @ step {step}{format_metrics(r)} | {int(r['num_examples']):,} examples"
