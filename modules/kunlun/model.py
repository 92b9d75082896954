"""``KunlunDense``: the dense arch of Kunlun (everything but the embedding tables).

Per global layer l (docs/models/kunlun.md): X_sum = gated compression of the non-sequence tokens X; every
event stack runs its sequence layer l with X_sum as GDPA's context (non-seq -> seq) and yields its
HSP summary (fresh or reused); the interaction module mixes ``[X_sum ‖ summaries]`` (seq -> non-seq)
into n new tokens, added to X with a LayerNorm. The head is an MLP on the flattened final X.

Legend: B batch, N dense features, P pooled width, L sequence length, D token width, n tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from recscale.modules.attention import time_positions
from recscale.modules.flops import FlopCount, Lengths, linear, linears
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts, MoWEOptions
from recscale.modules.kunlun.sequence import EventSequenceStack, EventSpec, SequenceOptions
from recscale.modules.kunlun.tokens import GatedCompression, NonSequenceTokens
from recscale.modules.mlp import MLP
from recscale.modules.outputs import DenseOutput

if TYPE_CHECKING:  # no TorchRec import at run time (see tokens.py)
    from recscale.modules.layout import PooledLayout


@dataclass(frozen=True)
class KunlunOptions:
    """Non-sequence settings of ``KunlunDense`` (resolved from ``model.kunlun``)."""

    dim: int
    num_layers: int
    dense_tokens: int = 1
    num_sum_tokens: int = 4
    xsum_gate: str = "self"
    rope: str = "none"
    rote_time_scale: float = 60.0


class KunlunDense(nn.Module):
    """Kunlun: ``dense(dense, pooled, sequences, masks, timestamps, domain) -> DenseOutput``.

    Args:
        num_dense: N.
        dense_arch: hidden widths of the dense-feature MLP.
        pooled: layout of the pooled sparse features.
        events: one ``EventSpec`` per event type (its sequence stack).
        opts: non-sequence settings.
        seq_opts: settings shared by the event stacks.
        mowe: interaction-module settings.
        over_arch: hidden widths of the head MLP.
        num_tasks: logits per example T.
        activation: MLP activation.
        dropout: head MLP dropout.
    """

    def __init__(
        self,
        num_dense: int,
        dense_arch: list[int],
        pooled: PooledLayout,
        events: list[EventSpec],
        opts: KunlunOptions,
        seq_opts: SequenceOptions,
        mowe: MoWEOptions,
        over_arch: list[int],
        num_tasks: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.opts = opts
        self.events = events
        d = opts.dim
        self.tokens = NonSequenceTokens(num_dense, dense_arch, opts.dense_tokens, pooled, d, activation)
        n = self.tokens.num_tokens
        self.xsum = nn.ModuleList(
            GatedCompression(n, opts.num_sum_tokens, d, opts.xsum_gate) for _ in range(opts.num_layers)
        )
        self.stacks = nn.ModuleDict({e.name: EventSequenceStack(e, seq_opts) for e in events})
        interaction_in = opts.num_sum_tokens + sum(e.num_tokens for e in events)
        self.interaction = nn.ModuleList(
            MixtureOfWukongExperts(interaction_in, n, d, mowe) for _ in range(opts.num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(opts.num_layers))
        self.top = MLP(n * d, over_arch, activation, dropout)
        self.head = nn.Linear(self.top.out_dim, num_tasks)

    def forward(
        self,
        dense: torch.Tensor,
        pooled: torch.Tensor,
        sequences: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        timestamps: dict[str, torch.Tensor],
        domain: torch.Tensor | None = None,
    ) -> DenseOutput:
        """Logits ``[B, T]``, the interaction's auxiliary loss, expert-load diagnostics.

        Args:
            dense: ``[B, N]`` dense features.
            pooled: ``[B, P]`` pooled sparse embeddings.
            sequences: ``[B, L_e, D_e]`` right-aligned event embeddings by event type (cast to ``pooled.dtype``).
            masks: ``[B, L_e]`` bool, True at real events.
            timestamps: ``[B, L_e]`` int64 seconds (used by ROTE).
            domain: unused (kept for the sequence-model contract).
        """
        x_BnD = self.tokens(dense, pooled)
        s: dict[str, torch.Tensor] = {}
        positions: dict[str, torch.Tensor | None] = {}
        summaries: dict[str, torch.Tensor | None] = {}
        stacks = self._stacks()
        for name, stack in stacks.items():
            s[name] = stack.embed(sequences[name].to(pooled.dtype), masks[name])
            positions[name] = self._positions(masks[name], timestamps[name])
            summaries[name] = None
        aux = x_BnD.new_zeros(())
        diagnostics: dict[str, torch.Tensor] = {}
        for i in range(self.opts.num_layers):
            xsum_BSD = self.xsum[i](x_BnD)
            for name, stack in stacks.items():
                s[name], summaries[name] = stack.layer(
                    i, s[name], masks[name], xsum_BSD, positions[name], summaries[name]
                )
            mixed = torch.cat([xsum_BSD, *[_summary(summaries, e.name) for e in self.events]], dim=1)
            y_BnD, layer_aux, layer_diag = self.interaction[i](mixed)
            x_BnD = self.norms[i](x_BnD + y_BnD)
            aux = aux + layer_aux
            diagnostics.update({f"kunlun/layer{i}/{k}": v for k, v in layer_diag.items()})
        logits = self.head(self.top(x_BnD.flatten(1)))
        return logits, aux, diagnostics

    def _stacks(self) -> dict[str, EventSequenceStack]:
        """The event stacks, typed."""
        return {name: cast(EventSequenceStack, stack) for name, stack in self.stacks.items()}

    def _positions(self, mask_BL: torch.Tensor, times_BL: torch.Tensor) -> torch.Tensor | None:
        if self.opts.rope == "position":
            return torch.arange(mask_BL.shape[1], device=mask_BL.device).float().expand(mask_BL.shape[0], -1)
        if self.opts.rope == "time":
            return time_positions(times_BL, self.opts.rote_time_scale)
        return None

    def flops(
        self, seq_lengths: Mapping[str, int | Lengths] | None = None, executed: bool = False
    ) -> dict[str, FlopCount]:
        """FLOPs by module, forward and exact backward: per example, or summed over a batch.

        Args:
            seq_lengths: sequence length per event type. Ints: one example at those lengths (default:
                each event's ``max_length``, what the padded implementation runs). ``Lengths``: a
                batch's real lengths; every count is then the sum over its examples, each at its own
                lengths (an event type left out counts at ``max_length`` in every example).
            executed: count what the kernels execute (every attention pair for ``reference`` and
                ``sdpa``, touched tiles for ``flex``; every routed MoWE expert with ``expert_compute:
                dense``) instead of model FLOPs (window pairs only, active experts only).
        """
        lengths = dict(seq_lengths or {})
        batch = [n for n in lengths.values() if isinstance(n, Lengths)]
        examples = batch[0].examples if batch else 1
        out: dict[str, FlopCount] = dict(self.tokens.flops())
        for i in range(self.opts.num_layers):
            out[f"layer{i}/xsum"] = cast(GatedCompression, self.xsum[i]).flops()
            mowe = cast(MixtureOfWukongExperts, self.interaction[i])
            out[f"layer{i}/mowe"] = mowe.executed_flops() if executed else mowe.flops()
        out["top"] = linears(self.top)
        out["head"] = linear(self.head.in_features, self.head.out_features)
        out = {k: v.scaled(examples) for k, v in out.items()}  # the non-sequence side: once per example
        for name, stack in self._stacks().items():
            length: int | Lengths = lengths.get(name, stack.event.max_length)
            if batch and not isinstance(length, Lengths):
                length = Lengths.full(length, examples)
            out.update(stack.flops(length, executed))
        return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _summary(summaries: dict[str, torch.Tensor | None], name: str) -> torch.Tensor:
    summary = summaries[name]
    assert summary is not None, "layer 0 always computes a summary"
    return summary


def _order(key: str) -> tuple[int, str]:
    """Sort the breakdown by layer (tokens first, head last) for readable tables."""
    if key.startswith("layer"):
        return (1 + int(key[5:].split("/")[0]), key)
    if key in ("top", "head"):
        return (10**6 + (key == "head"), key)
    return (0, key)
