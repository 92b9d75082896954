"""Zipper heads that share one logit: a delayed task's K attribution-window heads derived from one output.

``model.tasks[*].window_heads`` chooses how a delayed task's K heads are made (``linear``, the default, has
none of this module: the arch's last layer has K outputs for the task):

- ``offset``: ``head_k = z + b_k``, a learned shift per window (``b`` starts at 0).
- ``scaled``: the delayed-feedback model (Chapelle, KDD 2014). A conversion the longest window would see is
  seen within window k with probability ``F_k``, whatever the example, so the window-k label is
  ``Bernoulli(p · F_k)``. The longest head is ``z`` itself (``p = σ(z)``, what is served; its window is the
  label's definition, ``F_K = 1``) and ``head_k = logit(σ(z) · σ(a_k))`` for k < K, with ``F_k = σ(a_k)``
  learned from ``window_shares`` (1/2 each without). Computed stably as ``z + log σ(a_k) − softplus(z + log σ(−a_k))``.

Either way every row trains the one shared logit, instead of one head in K. With ``scaled`` the censored
windows' labels are modelled exactly when the delay does not depend on the example, so a short window's
rows neither pull the served prediction down nor need an offset of the served head to be learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recscale.modules.flops import FlopCount

SHARED_KINDS = ("offset", "scaled")
"""``window_heads`` values whose K heads derive from one logit of the dense arch."""


class SharedWindowHeads(nn.Module):
    """``dense -> [B, D]`` logits (one per shared-head task) expanded to ``[B, H]`` heads.

    Args:
        dense: the dense arch; its outputs are, per task in order, ``windows`` logits (``linear`` heads) or
            one (``offset`` / ``scaled`` heads).
        windows: per task, its number of windows K.
        kinds: per task, its ``window_heads`` (``linear``, ``offset`` or ``scaled``).
        shares: per task, the starting F_k of its ``scaled`` heads (K - 1 values; empty = 1/2 each).

    Parameters: ``offsets`` (one per window of the ``offset`` tasks) and ``seen_logits`` (``a_k``, one per
    window but the last of the ``scaled`` tasks).
    """

    def __init__(
        self, dense: nn.Module, windows: Sequence[int], kinds: Sequence[str], shares: Sequence[Sequence[float]] = ()
    ) -> None:
        super().__init__()
        self.inner = dense
        columns: list[int] = []  # per output head: the inner column it reads
        offset_heads: list[int] = []  # output heads shifted by offsets[i], in order
        scaled_heads: list[int] = []  # output heads scaled by σ(seen_logits[i]), in order
        starts: list[float] = []  # F_k each scaled head starts at
        column = 0
        for i, (k, kind) in enumerate(zip(windows, kinds, strict=True)):
            first = len(columns)
            if kind in SHARED_KINDS and k > 1:
                columns += [column] * k
                column += 1
                if kind == "offset":
                    offset_heads += range(first, first + k)
                else:
                    scaled_heads += range(first, first + k - 1)  # the longest head is the logit itself
                    starts += list(shares[i]) if i < len(shares) and shares[i] else [0.5] * (k - 1)
            else:
                columns += list(range(column, column + k))
                column += k
        self.columns = columns
        # only the parameters some task uses (no empty ones: checkpoints of offset heads stay loadable)
        self.offsets = nn.Parameter(torch.zeros(len(offset_heads))) if offset_heads else None
        self.seen_logits = (
            nn.Parameter(torch.logit(torch.tensor(starts, dtype=torch.float64)).float()) if scaled_heads else None
        )
        self.register_buffer("offset_heads", torch.tensor(offset_heads, dtype=torch.long), persistent=False)
        self.register_buffer("scaled_heads", torch.tensor(scaled_heads, dtype=torch.long), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The inner arch's outputs, its logits expanded to every window head ``[B, H]``."""
        logits, aux, diagnostics = self.inner(*args, **kwargs)
        heads = logits[:, self.columns]
        if self.offsets is not None:
            shifted = heads[:, self.offset_heads] + self.offsets.to(heads.dtype)
            heads = heads.index_copy(1, self.offset_heads, shifted)
        if self.seen_logits is not None:
            z, a = heads[:, self.scaled_heads], self.seen_logits.to(heads.dtype)
            scaled = z + F.logsigmoid(a) - F.softplus(z + F.logsigmoid(-a))  # logit(σ(z) · σ(a))
            heads = heads.index_copy(1, self.scaled_heads, scaled)
        return heads, aux, diagnostics

    def seen_share(self) -> torch.Tensor:
        """``[windows of scaled tasks but the last]`` F_k: the share of conversions each window sees."""
        if self.seen_logits is None:
            return torch.zeros(0)
        return torch.sigmoid(self.seen_logits.detach())

    def flops(self, *args: Any, **kwargs: Any) -> dict[str, FlopCount]:
        """The inner arch's FLOPs (the offsets and scalings are elementwise, which count 0)."""
        counts: dict[str, FlopCount] = self.inner.flops(*args, **kwargs)
        return counts


def wrap_window_heads(
    dense: nn.Module, windows: Sequence[int], kinds: Sequence[str], shares: Sequence[Sequence[float]] = ()
) -> nn.Module:
    """``dense`` as is, or under ``SharedWindowHeads`` when some delayed task has shared-logit heads."""
    if not any(kind in SHARED_KINDS and k > 1 for k, kind in zip(windows, kinds, strict=True)):
        return dense
    return SharedWindowHeads(dense, windows, kinds, shares)
