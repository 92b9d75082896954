"""How one training step runs: TorchRec's sparse-dist pipeline, or a plain loop with the same numerics.

``HybridTrainPipeline`` is TorchRec's ``TrainPipelineSparseDist`` (it overlaps the next batch's
embedding input all-to-all with this batch's compute) with backward and the optimizer step handed
to the dense backend (DDP or a DeepSpeed engine); the tables' fused optimizer runs inside backward.
Both step drivers time their phases so runs can say where the time goes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from recscale.modules.model import RecModel, StepOutput
from recscale.sharding.apply import Updater

PHASES = ("data", "input_dist", "forward", "backward", "optimizer")


class PhaseTimer:
    """Time per phase of the step, read once per log window (``take``).

    CPU: host clocks around each phase (exact: everything there is synchronous). CUDA: a pair of
    events on the current stream around each phase, whose elapsed times are read in ``take``, so
    timing adds no host synchronisation to the step; a phase's time is how long it held the compute
    stream (the copy and input all-to-all that TorchRec runs on its side streams count only where
    the compute stream waits for them). ``--profile`` times the same way, so profiled steps keep the
    pipeline's overlap; each op's own device time is in its ``torch.profiler`` trace.

    A step driver may time the whole step (``begin_step`` / ``end_step``) and name one phase the
    ``residual``: it gets the step's time not claimed by the other phases.

    Args:
        device: the training device.
        residual: the phase that gets the unclaimed time of each timed step, or None.
    """

    def __init__(self, device: torch.device, residual: str | None = None) -> None:
        self.device = device
        self.residual = residual
        self.totals: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, Any, Any]] = []  # (phase, start, end) CUDA events not read yet
        self._step_start: Any = None

    def _use_events(self) -> bool:
        return self.device.type == "cuda"

    def _now(self) -> Any:
        """A point in time: a recorded CUDA event, or host seconds."""
        if self._use_events():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _add(self, phase: str, start: Any, end: Any) -> None:
        if self._use_events():
            self._events.append((phase, start, end))
        else:
            self.totals[phase] += end - start

    def timed(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` and add its duration to ``phase``."""
        start = self._now()
        try:
            return fn(*args)
        finally:
            self._add(phase, start, self._now())

    def begin_step(self) -> None:
        """The step starts (for the ``residual`` phase)."""
        self._step_start = self._now()

    def end_step(self) -> None:
        """The step ends: its time not claimed by another phase goes to the ``residual`` phase."""
        if self._step_start is not None:
            self._add("step", self._step_start, self._now())
            self._step_start = None

    def take(self) -> dict[str, float]:
        """The totals since the last call, in seconds; resets them (CUDA: waits for the last event)."""
        if self._events:
            self._events[-1][2].synchronize()
            for phase, start, end in self._events:
                self.totals[phase] += start.elapsed_time(end) / 1e3
            self._events.clear()
        step = self.totals.pop("step", 0.0)
        out = {p: self.totals.get(p, 0.0) for p in PHASES}
        if self.residual is not None and step:
            claimed = sum(v for p, v in out.items() if p != self.residual)
            out[self.residual] = max(0.0, step - claimed)
        self.totals.clear()
        return out


class _UpdaterAsOptimizer:
    """What TorchRec's pipeline calls ``optimizer``: zero_grad and step go to the updater (step timed)."""

    param_groups: list[dict[str, Any]] = []

    def __init__(self, updater: Updater, timer: PhaseTimer) -> None:
        self.updater = updater
        self.timer = timer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.updater.zero_grad()

    def step(self) -> None:
        self.timer.timed("optimizer", self.updater.step)


TORCHREC_PRIVATE_API = {
    "TrainPipelineSparseDist._backward(self, losses)": "overridden: the dense backend runs backward",
    "TrainPipelineSparseDist._model_attached": "detach/attach keep the pipelined forwards",
    "TrainPipelineSparseDist._pipelined_modules": "detach/attach keep the pipelined forwards",
    "TrainPipelineSparseDist._pipelined_postprocs": "attach falls back to TorchRec's own when set",
    "TrainPipelineSparseDist._model": "attach compares the model",
    "ShardedModule._input_dists[i]._dist": "the KJT all-to-all whose forward detach keeps",
}
"""TorchRec 1.8 internals this module relies on (TorchRec has no public hook for a custom backward or
for pausing the pipeline without restarting the batch in flight); ``tests/trainer/test_pipeline_eval.py``
checks each one and fails naming it when TorchRec changes."""


class HybridTrainPipeline(TrainPipelineSparseDist):  # type: ignore[misc]
    """TorchRec's sparse-dist pipeline with the updater (dense backend + tables) owning backward and step.

    Args:
        model: the top-level ``RecModel`` (sharded tables inside).
        updater: backward and optimizer steps.
        device: the training device.
        timer: collects phase durations.
    """

    def __init__(self, model: RecModel, updater: Updater, device: torch.device, timer: PhaseTimer) -> None:
        optimizer = _UpdaterAsOptimizer(updater, timer)
        super().__init__(model, optimizer, device, execute_all_batches=True)  # type: ignore[arg-type]
        self._updater = updater
        self._timer = timer
        timer.residual = "forward"  # the forward runs inside ``progress``, between the phases timed here
        self._kept_forwards: tuple[list[Any], list[Any]] | None = None  # set by ``detach``

    def enqueue_batch(self, dataloader_iter: Iterator[Any]) -> bool:
        """Read the next batch (and copy it to the device): the "data" phase."""
        result: bool = self._timer.timed("data", super().enqueue_batch, dataloader_iter)
        return result

    def start_sparse_data_dist(self, batch: Any, context: Any) -> None:
        """First half of the tables' input all-to-all (splits)."""
        self._timer.timed("input_dist", super().start_sparse_data_dist, batch, context)

    def wait_sparse_data_dist(self, context: Any) -> None:
        """Second half of the tables' input all-to-all (ids)."""
        self._timer.timed("input_dist", super().wait_sparse_data_dist, context)

    def _backward(self, losses: torch.Tensor) -> None:
        self._timer.timed("backward", self._updater.backward, losses)

    def detach(self) -> torch.nn.Module:
        """The model with its sharded modules' own forwards back (for evaluation between steps).

        The pipelined forwards are kept, and ``attach`` puts them back as they were. TorchRec's own
        ``attach`` rewrites the model again and restarts the input all-to-all of the batch already in
        flight: that second input dist of one batch desynchronises the sequence (EmbeddingCollection)
        all-to-alls across ranks on the next step (gloo: ``in->size == out->size``).
        """
        if self._model_attached and self._pipelined_modules:
            self._kept_forwards = (
                [m.forward for m in self._pipelined_modules],
                [d.forward for d in _kjt_dists(self._pipelined_modules)],
            )
        model: torch.nn.Module = super().detach()
        return model

    def attach(self, model: torch.nn.Module | None = None, sparse_dist: bool = True) -> None:
        """Undo ``detach``: the pipelined forwards as they were, no input all-to-all run again."""
        kept, self._kept_forwards = self._kept_forwards, None
        if kept is None or (model is not None and model is not self._model) or self._pipelined_postprocs:
            super().attach(model, sparse_dist)
            return
        module_forwards, dist_forwards = kept
        for module, forward in zip(self._pipelined_modules, module_forwards):
            module.forward = forward
        for dist, forward in zip(_kjt_dists(self._pipelined_modules), dist_forwards):
            dist.forward = forward
        self._model_attached = True

    def step(self, batches: Iterator[Any]) -> StepOutput:
        """One training step; ``StopIteration`` when the data is exhausted.

        The forward pass runs inside TorchRec's ``progress`` between the phases timed above, so the
        timer (``residual="forward"``) gives it the step's time that no other phase claimed.
        """
        self._timer.begin_step()
        try:
            out = super().progress(batches)
        finally:
            self._timer.end_step()
        return out  # type: ignore[no-any-return]


def _kjt_dists(modules: list[Any]) -> list[Any]:
    """The KJT all-to-all modules inside the pipelined sharded modules, in TorchRec's order."""
    return [
        dist._dist
        for module in modules
        for _, child in module.named_modules()
        for dist in getattr(child, "_input_dists", [])
        if hasattr(dist, "_dist")
    ]


class PlainStepper:
    """The same step without pipelining (``trainer.pipeline: false``), e.g. for debugging.

    Args:
        model: the top-level ``RecModel``.
        updater: backward and optimizer steps.
        device: the training device.
        timer: collects phase durations.
    """

    def __init__(self, model: RecModel, updater: Updater, device: torch.device, timer: PhaseTimer) -> None:
        self.model = model
        self.updater = updater
        self.device = device
        self._timer = timer

    def step(self, batches: Iterator[Any]) -> StepOutput:
        """One training step; ``StopIteration`` when the data is exhausted."""
        batch = self._timer.timed("data", lambda: next(batches).to(self.device, non_blocking=True))
        self.updater.zero_grad()
        loss, out = self._timer.timed("forward", self.model, batch)
        self._timer.timed("backward", self.updater.backward, loss)
        self._timer.timed("optimizer", self.updater.step)
        return out  # type: ignore[no-any-return]

    def detach(self) -> RecModel:
        """Nothing to undo (for symmetry with the pipeline)."""
        return self.model
