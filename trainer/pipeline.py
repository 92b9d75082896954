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
    """Accumulates wall time per phase of the step (exact on CPU, where everything is synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    def timed(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` and add its duration to ``phase``."""
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.totals[phase] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The totals since the last call, in seconds; resets them."""
        out = {p: self.totals.get(p, 0.0) for p in PHASES}
        self.totals.clear()
        return out


class _UpdaterAsOptimizer:
    """What TorchRec's pipeline calls ``optimizer``: zero_grad goes to the updater."""

    param_groups: list[dict[str, Any]] = []

    def __init__(self, updater: Updater) -> None:
        self.updater = updater

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.updater.zero_grad()

    def step(self) -> None:  # the pipeline's _optimizer_step is overridden below
        raise AssertionError("unreachable: HybridTrainPipeline steps the dense backend itself")


class HybridTrainPipeline(TrainPipelineSparseDist):  # type: ignore[misc]
    """TorchRec's sparse-dist pipeline with the updater (dense backend + tables) owning backward and step.

    Args:
        model: the top-level ``RecModel`` (sharded tables inside).
        updater: backward and optimizer steps.
        device: the training device.
        timer: collects phase durations.
    """

    def __init__(self, model: RecModel, updater: Updater, device: torch.device, timer: PhaseTimer) -> None:
        super().__init__(model, _UpdaterAsOptimizer(updater), device, execute_all_batches=True)  # type: ignore[arg-type]
        self._updater = updater
        self._timer = timer
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

    def _optimizer_step(self) -> None:
        self._timer.timed("optimizer", self._updater.step)

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
        """One training step; ``StopIteration`` when the data is exhausted."""
        start = time.perf_counter()
        before = dict(self._timer.totals)
        out = super().progress(batches)
        elapsed = time.perf_counter() - start
        counted = sum(self._timer.totals[p] - before.get(p, 0.0) for p in PHASES if p != "forward")
        self._timer.totals["forward"] += max(0.0, elapsed - counted)
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
        batch = self._timer.timed("data", lambda: next(batches).to(self.device))
        self.updater.zero_grad()
        loss, out = self._timer.timed("forward", self.model, batch)
        self._timer.timed("backward", self.updater.backward, loss)
        self._timer.timed("optimizer", self.updater.step)
        return out  # type: ignore[no-any-return]

    def detach(self) -> RecModel:
        """Nothing to undo (for symmetry with the pipeline)."""
        return self.model
