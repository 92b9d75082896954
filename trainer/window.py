"""Per-step bookkeeping that never waits for the device: the log window's sums and the step clock.

On a GPU, reading a value the step computed (``float(loss)``, ``.item()``, ``.cpu()``) makes the
host wait for every kernel queued before it, which stalls TorchRec's pipeline (it overlaps the next
batch's copy and input all-to-all with this batch's compute). So the loop keeps what it accumulates
per step (the loss and the model's scalar diagnostics) as tensors on the step's device, and reads
them once per log window (``LogWindow.read``), and it times steps with host clocks that are drained
(``StepClock.lap``) only where the loop stops stepping anyway: a log boundary, an evaluation or
checkpoint, the end of the warm-up steps or a stage boundary.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from recscale.sharding.process_group import host_group


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LogWindow:
    """Sums of the steps since the last log record, on the step's device.

    ``add`` is called every step and only queues device work (float64 additions of detached
    scalars); ``read`` moves the sums to the host once, averages them over the steps and the ranks.
    Diagnostics are the model's scalar (one-element) outputs, e.g. expert loads.
    """

    def __init__(self) -> None:
        self.steps = 0
        self._loss: torch.Tensor | None = None
        self._diagnostics: dict[str, torch.Tensor] = {}

    def add(self, loss: torch.Tensor, diagnostics: dict[str, torch.Tensor]) -> None:
        """One step's ``loss`` (a detached scalar) and ``diagnostics``; no host read."""
        value = loss.detach().reshape(()).double()
        self._loss = value if self._loss is None else self._loss + value
        for key, tensor in diagnostics.items():
            if tensor.numel() == 1:  # shape metadata, not a read of the value
                value = tensor.detach().reshape(()).double()
                self._diagnostics[key] = self._diagnostics[key] + value if key in self._diagnostics else value
        self.steps += 1

    def read(self, world_size: int) -> tuple[float, dict[str, float]]:
        """The window's mean loss and diagnostics over its steps and every rank; resets the sums.

        One device-to-host copy; the mean over ranks goes through ``host_group()`` (a collective:
        every rank calls it at the same step).
        """
        keys = sorted(self._diagnostics)
        steps = max(self.steps, 1)
        loss = self._loss if self._loss is not None else torch.zeros((), dtype=torch.float64)
        device_values = torch.stack([loss.to(torch.float64)] + [self._diagnostics[k] for k in keys])
        values = device_values.cpu() / steps  # the window's single read of step values
        if dist.is_available() and dist.is_initialized() and world_size > 1:
            dist.all_reduce(values, group=host_group())
            values /= world_size
        means = values.tolist()
        self.steps, self._loss, self._diagnostics = 0, None, {}
        return means[0], dict(zip(keys, means[1:], strict=True))


class StepClock:
    """Wall time of training steps, measured without waiting for the device on every step.

    The host runs ahead of a GPU, so one step's host time is not its device time; a stretch of
    consecutive steps is timed from the mark before its first step to the moment its last step's
    work has finished (``lap`` drains the device first). The loop laps only where it stops stepping
    anyway, so the drain costs nothing that would not be paid there.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._mark = time.perf_counter()

    def restart(self) -> None:
        """Start timing from now (after work that is not a step: evaluation, checkpoint, logging)."""
        self._mark = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last mark, the steps' device work included; marks again."""
        synchronize(self.device)
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        return seconds
