"""The log window keeps its sums on the step's device and reads them once; the phase timer's arithmetic."""

from __future__ import annotations

import pytest
import torch

from recscale.trainer.pipeline import PhaseTimer
from recscale.trainer.window import LogWindow


def test_window_means_over_steps_match_a_host_computation() -> None:
    window = LogWindow()
    losses = [0.5, 0.25, 0.125]
    for i, loss in enumerate(losses):
        window.add(torch.tensor(loss), {"load/e0": torch.tensor(float(i)), "vector": torch.ones(3)})
    loss, diagnostics = window.read(world_size=1)
    assert loss == sum(losses) / 3
    assert diagnostics == {"load/e0": 1.0}  # one-element diagnostics only
    assert window.steps == 0 and window.read(1)[1] == {}  # reset


def test_window_sums_stay_on_the_steps_device_until_read() -> None:
    """With the step's tensors on a device the host cannot read (``meta``), adding works and only ``read`` fails.

    A CPU accumulator (``cpu_sum += loss``) would already fail in ``add``; a per-step ``float()`` too.
    """
    window = LogWindow()
    for _ in range(4):
        window.add(torch.empty((), device="meta"), {"aux": torch.empty(1, device="meta")})
    assert window.steps == 4
    with pytest.raises(NotImplementedError, match="meta"):
        window.read(world_size=1)


def test_phase_timer_gives_the_residual_phase_the_unclaimed_step_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 10.0, 11.0, 12.5, 20.0]).__next__
    monkeypatch.setattr("recscale.trainer.pipeline.time.perf_counter", clock)
    timer = PhaseTimer(torch.device("cpu"), residual="forward")
    timer.begin_step()  # 0.0
    timer.timed("backward", lambda: None)  # 10.0 .. 11.0
    timer.timed("optimizer", lambda: None)  # 12.5 .. 20.0
    monkeypatch.setattr("recscale.trainer.pipeline.time.perf_counter", lambda: 21.0)
    timer.end_step()
    phases = timer.take()
    assert phases["backward"] == 1.0 and phases["optimizer"] == 7.5
    assert phases["forward"] == 21.0 - 1.0 - 7.5
    assert timer.take() == dict.fromkeys(phases, 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_phase_timer_on_cuda_records_events_without_synchronising() -> None:
    timer = PhaseTimer(torch.device("cuda"), residual="forward")
    x = torch.randn(2048, 2048, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        timer.begin_step()
        timer.timed("backward", lambda: x @ x)
        timer.end_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    phases = timer.take()
    assert phases["backward"] > 0 and phases["forward"] >= 0


def test_gpu_runs_pin_host_batches_and_copy_them_asynchronously(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches for a GPU are pinned (``TrainData`` and evaluation's ``pinned``); the steppers copy with
    ``non_blocking=True`` (TorchRec's pipeline does too). CPU runs pin nothing."""
    from recscale.trainer.data import pinned, pins_host_batches
    from recscale.trainer.pipeline import PlainStepper

    assert pins_host_batches(torch.device("cuda", 0)) and not pins_host_batches(torch.device("cpu"))

    class FakeBatch:
        def __init__(self) -> None:
            self.pinned = False
            self.copies: list[tuple[torch.device, bool]] = []

        def pin_memory(self) -> FakeBatch:
            self.pinned = True
            return self

        def to(self, device: torch.device, non_blocking: bool = False) -> FakeBatch:
            self.copies.append((device, non_blocking))
            return self

    batches = [FakeBatch(), FakeBatch()]
    assert [b.pinned for b in pinned(batches, torch.device("cpu"))] == [False, False]
    assert [b.pinned for b in pinned(batches, torch.device("cuda", 0))] == [True, True]

    class Model:
        def __call__(self, batch: FakeBatch) -> tuple[torch.Tensor, tuple[()]]:
            return torch.zeros(()), ()

    class Updater:
        def zero_grad(self) -> None: ...
        def backward(self, loss: torch.Tensor) -> None: ...
        def step(self) -> None: ...

    device = torch.device("cpu")
    stepper = PlainStepper(Model(), Updater(), device, PhaseTimer(device))  # type: ignore[arg-type]
    stepper.step(iter([batches[0]]))
    assert batches[0].copies == [(device, True)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_for_a_gpu_are_really_pinned() -> None:
    from recscale.trainer.data import pinned
    from tests.batches import random_batch, tiny_config

    batch = next(pinned([random_batch(tiny_config(), 8, seed=0)], torch.device("cuda", 0)))
    assert batch.dense.is_pinned() and batch.labels.is_pinned()
