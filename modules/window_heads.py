"""Zipper heads that differ only by an offset: one logit per delayed task, plus a learned shift per window.

With ``window_heads: offset`` a delayed task's K attribution-window heads share the dense arch's one logit
``z`` and differ by a learned offset each: ``head_k = z + b_k`` (``b`` starts at 0). When a conversion's
delay does not depend on the example, the window-W label is ``Bernoulli(p · P(delay <= W))`` and the windows
differ only in how much of p they see, which such heads express; every row then trains the one shared
logit, instead of one head in K (``linear``: the arch's last layer has K outputs per task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recscale.modules.flops import FlopCount


class WindowOffsets(nn.Module):
    """``dense -> [B, D]`` logits (one per ``offset`` task) expanded to ``[B, H]`` heads.

    Args:
        dense: the dense arch; its outputs are, per task in order, ``windows`` logits (``linear`` heads) or
            one (``offset`` heads).
        windows: per task, its number of windows K.
        offset: per task, whether its K heads are offsets of one logit.
    """

    def __init__(self, dense: nn.Module, windows: Sequence[int], offset: Sequence[bool]) -> None:
        super().__init__()
        self.inner = dense
        self.offsets = nn.Parameter(torch.zeros(sum(k for k, o in zip(windows, offset) if o)))
        columns, shifts = [], []  # per output head: the inner column it reads, its offset (-1 = none)
        column, shift = 0, 0
        for k, o in zip(windows, offset):
            if o:
                columns += [column] * k
                shifts += list(range(shift, shift + k))
                column, shift = column + 1, shift + k
            else:
                columns += list(range(column, column + k))
                shifts += [-1] * k
                column += k
        self.columns = columns
        self.register_buffer("use_offset", torch.tensor([s >= 0 for s in shifts]), persistent=False)
        self.register_buffer("shift_index", torch.tensor([max(s, 0) for s in shifts]), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The inner arch's outputs, its logits expanded to every window head."""
        logits, aux, diagnostics = self.inner(*args, **kwargs)
        heads = logits[:, self.columns]
        if self.offsets.numel():
            shifts = self.offsets[self.shift_index] * self.use_offset.to(self.offsets.dtype)
            heads = heads + shifts.to(heads.dtype)
        return heads, aux, diagnostics

    def flops(self, *args: Any, **kwargs: Any) -> dict[str, FlopCount]:
        """The inner arch's FLOPs (the offsets are adds, which count 0)."""
        counts: dict[str, FlopCount] = self.inner.flops(*args, **kwargs)
        return counts


def wrap_window_heads(dense: nn.Module, windows: Sequence[int], offset: Sequence[bool]) -> nn.Module:
    """``dense`` as is, or under ``WindowOffsets`` when some delayed task has offset heads."""
    if not any(o and k > 1 for k, o in zip(windows, offset)):
        return dense
    return WindowOffsets(dense, windows, offset)
