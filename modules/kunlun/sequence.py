"""One event type's sequence stack: GDPA, sliding-window attention and HSP, scheduled by CompSkip.

Computation skip (docs/models/kunlun.md): with ``compskip`` on, even layers run GDPA (context -> sequence)
and compute a fresh HSP summary but no self-attention; odd layers run sliding-window self-attention
and reuse the summary of the layer before, except the last layer, which always summarises afresh
(otherwise its output would reach nothing). With it off every layer runs GDPA, then SWA, then HSP.
Event-level personalization: each event type has its own width, heads, seeds, summary tokens,
window and number of layers; after its last layer an event's summary stays as it is.

Legend: B batch, L sequence length, D embedding dim, E event width, S X_sum tokens, T summary tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from recscale.modules.attention import AttentionBackend
from recscale.modules.flops import FlopCount, Lengths, linear
from recscale.modules.kunlun.gdpa import GDPA, gdpa_temperature
from recscale.modules.kunlun.hsp import HierarchicalSeedPooling
from recscale.modules.kunlun.swa import SlidingWindowAttention


@dataclass(frozen=True)
class LayerOps:
    """What one sequence layer runs."""

    gdpa: bool
    swa: bool
    hsp: bool


def layer_plan(num_layers: int, compskip: bool) -> list[LayerOps]:
    """The per-layer schedule: CompSkip alternates (GDPA + HSP) and (SWA, summary reused).

    The last layer always computes a fresh summary: the summary is all the non-sequence side reads
    of the sequence, so a final SWA layer that reused the previous summary would be dead compute.
    """
    if not compskip:
        return [LayerOps(gdpa=True, swa=True, hsp=True) for _ in range(num_layers)]
    last = num_layers - 1
    return [LayerOps(gdpa=i % 2 == 0, swa=i % 2 == 1, hsp=i % 2 == 0 or i == last) for i in range(num_layers)]


@dataclass(frozen=True)
class EventSpec:
    """One event type's resolved settings (config defaults filled in)."""

    name: str
    embedding_dim: int
    dim: int
    num_heads: int
    num_layers: int
    num_seeds: int
    num_tokens: int
    window: int
    max_length: int


@dataclass(frozen=True)
class SequenceOptions:
    """Settings shared by every event stack."""

    context_dim: int
    num_context_tokens: int
    kv_tokens: int = 0
    compskip: bool = True
    gdpa_activation: str = "silu"
    gdpa_temperature: str = "max_length"
    gdpa_scale: float = 1.0
    kron_terms: int = 4
    norm: str = "post"
    rope: bool = False
    rope_base: float = 10_000.0
    causal: bool = False
    backend: AttentionBackend = AttentionBackend.SDPA


class EventSequenceStack(nn.Module):
    """The sequence side of one event type, layer by layer.

    Args:
        event: the event's settings.
        opts: settings shared by all events.
    """

    def __init__(self, event: EventSpec, opts: SequenceOptions) -> None:
        super().__init__()
        self.event = event
        self.plan = layer_plan(event.num_layers, opts.compskip)
        e = event.dim
        self.in_proj = nn.Linear(event.embedding_dim, e) if event.embedding_dim != e else None
        tau = gdpa_temperature(opts.gdpa_temperature, event.max_length, e // event.num_heads)
        self.gdpa = nn.ModuleDict(
            {
                str(i): GDPA(
                    e,
                    opts.context_dim,
                    opts.num_context_tokens,
                    opts.kv_tokens,
                    event.num_heads,
                    opts.gdpa_activation,
                    tau,
                    opts.gdpa_scale,
                    opts.norm,
                )
                for i, ops in enumerate(self.plan)
                if ops.gdpa
            }
        )
        self.swa = nn.ModuleDict(
            {
                str(i): SlidingWindowAttention(
                    e, event.num_heads, event.window, opts.causal, opts.rope, opts.rope_base, opts.norm, opts.backend
                )
                for i, ops in enumerate(self.plan)
                if ops.swa
            }
        )
        self.hsp = nn.ModuleDict(
            {
                str(i): HierarchicalSeedPooling(
                    e,
                    opts.context_dim,
                    event.num_seeds,
                    event.num_tokens,
                    event.num_heads,
                    opts.kron_terms,
                    opts.backend,
                )
                for i, ops in enumerate(self.plan)
                if ops.hsp
            }
        )

    def embed(self, seq_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Event tokens ``[B, L, E]`` (projected when E differs from the embedding dim; zeros at padding)."""
        s_BLE = seq_BLD if self.in_proj is None else self.in_proj(seq_BLD)
        return s_BLE * mask_BL.unsqueeze(-1).to(s_BLE.dtype)

    def layer(
        self,
        index: int,
        s_BLE: torch.Tensor,
        mask_BL: torch.Tensor,
        xsum_BSD: torch.Tensor,
        positions_BL: torch.Tensor | None,
        summary_BTD: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run sequence layer ``index`` (nothing after the event's last layer); returns (s, summary)."""
        if index < len(self.plan):
            key = str(index)
            if self.plan[index].gdpa:
                s_BLE = self.gdpa[key](s_BLE, xsum_BSD, mask_BL)
            if self.plan[index].swa:
                s_BLE = self.swa[key](s_BLE, mask_BL, positions_BL)
            if self.plan[index].hsp:
                summary_BTD = self.hsp[key](s_BLE, mask_BL)
        assert summary_BTD is not None, "layer 0 always computes a summary"
        return s_BLE, summary_BTD

    def flops(self, seq_len: int | Lengths | None = None, executed: bool = False) -> dict[str, FlopCount]:
        """FLOPs by part (``layer{i}/{event}/{gdpa,swa,hsp}``).

        Args:
            seq_len: one example's length (default ``max_length``), or a batch's real ``Lengths``
                (then the counts are sums over its examples).
            executed: count what the attention kernels run instead of model FLOPs.
        """
        length = Lengths.of(self.event.max_length if seq_len is None else seq_len)
        name = self.event.name
        out: dict[str, FlopCount] = {}
        if self.in_proj is not None:
            out[f"{name}/in_proj"] = linear(self.in_proj.in_features, self.in_proj.out_features, tokens=length.tokens)
        for i in range(len(self.plan)):
            key = str(i)
            if key in self.gdpa:
                out[f"layer{i}/{name}/gdpa"] = cast(GDPA, self.gdpa[key]).flops(length)
            if key in self.swa:
                out[f"layer{i}/{name}/swa"] = cast(SlidingWindowAttention, self.swa[key]).flops(length, executed)
            if key in self.hsp:
                out[f"layer{i}/{name}/hsp"] = cast(HierarchicalSeedPooling, self.hsp[key]).flops(length, executed)
        return out
