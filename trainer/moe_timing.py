"""Time of the MoE dispatch all-to-all (DeepSpeed expert parallelism), for "where the time goes".

DeepSpeed's ``MOELayer`` times its two forward all-to-alls (dispatch and combine) when its
``wall_clock_breakdown`` flag is set, and keeps the running sums in ``time_falltoall`` and
``time_salltoall`` (ms since its timers were last reset). This reads them once per logging window,
then resets the timers, so the cost stays one host clock read per all-to-all. The layers are found
by those attributes, so ``trainer/`` needs no DeepSpeed import.

Only the forward all-to-alls are measured: the backward ones run inside autograd and stay in the
``backward`` phase. On CUDA the timers would record events and synchronise the stream on every read,
so they are switched on only on CPU, where the trainer's phase timers are exact anyway.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MoEDispatchTimer:
    """Per-window forward MoE all-to-all seconds per step (empty when there is nothing to time).

    Args:
        model: the model holding DeepSpeed ``MOELayer`` modules (anywhere inside).
        device: the training device (timing is on for ``cpu`` only).
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.layers: list[Any] = []
        if device.type != "cpu":
            return
        for module in model.modules():
            if hasattr(module, "time_falltoall") and hasattr(module, "wall_clock_breakdown"):
                module.wall_clock_breakdown = True
                self.layers.append(module)

    def take_ms(self) -> float:
        """Milliseconds of forward MoE all-to-all since the last call (0 without MoE layers); resets the timers."""
        ms = 0.0
        for layer in self.layers:
            ms += float(layer.time_falltoall) + float(layer.time_salltoall)
            layer.time_falltoall = layer.time_salltoall = 0.0
            for timer in getattr(layer.timers, "timers", {}).values():
                timer.reset()
        return ms

    def take(self, steps: int) -> dict[str, float]:
        """``{"time/moe_dispatch_fwd": seconds per step}`` since the last call (``{}`` without MoE layers)."""
        if not self.layers or steps <= 0:
            return {}
        return {"time/moe_dispatch_fwd": self.take_ms() / 1e3 / steps}
