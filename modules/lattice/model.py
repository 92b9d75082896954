"""``LatticeDense``: the Lattice dense arch (everything but the embedding tables).

    O_cd^(0) = [O_c; O_d]                                  feature processors (processors.py)
    O_s^e    = SequenceTokens(sequence e)                  per event type e, if any
    for l in 1 .. L:
        O_s^e  = TB_l^e(O_s^e)                             pre-norm Transformer block (transformer.py)
        C^e    = Compress_l^e(O_s^e)                       [B, seq_tokens, d], a map over the L_e slots
        X      = O_cd^(l-1) + ECS_l(O_cd^(0..l-2))          extended context (fusion.py; 0 at init)
        O_cd^(l) = DWFB_l([C^e ...; X])                    a Wukong layer (fusion.py)
    ŷ_t = MLP_t(flatten(O_cd^(L)))                         one bias-less head per task -> logits [B, T]

Without event sequences (none configured) the TB and Compress steps are skipped: each layer is
ECS + DWFB over O_cd. Each event type has its own TB and Compress weights (sequences of different
types are not concatenated). Compress reads the right-aligned slots (slot L_e - 1 is the newest
event), and padded slots are zero, so it sees only real events.

Legend: B batch, N dense features, P pooled width, L_e sequence length, d width, T tasks, G domain groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from recscale.modules.attention import AttentionBackend, time_positions
from recscale.modules.flops import FlopCount, Lengths, matmul
from recscale.modules.lattice.fusion import ExtendedContextStorage, fusion_block
from recscale.modules.lattice.layers import LatticeMLP, domain_masks, group_lookup
from recscale.modules.lattice.processors import FeatureTokens, SequenceTokens
from recscale.modules.lattice.transformer import TransformerBlock
from recscale.modules.outputs import DenseOutput
from recscale.modules.wukong import LinearCompressBlock, WukongLayer

if TYPE_CHECKING:
    from recscale.modules.layout import PooledLayout


@dataclass(frozen=True)
class LatticeOptions:
    """Settings of ``LatticeDense`` (resolved from ``model.lattice``; see ``configs/schema/lattice.py``)."""

    dim: int = 64
    num_layers: int = 2
    dense_tokens: int = 1
    seq_tokens: int = 4
    num_heads: int = 2
    ffn_dim: int = 256
    rope: str = "position"
    rope_base: float = 10_000.0
    rote_time_scale: float = 60.0
    qk_norm: bool = True
    backend: AttentionBackend = AttentionBackend.SDPA
    ecs: bool = True
    ecs_map: str = "flat"
    swish_norm: str = "rms_gate_norm"
    bias: bool = False
    untie_domains: int = 0
    domain_groups: tuple[tuple[int, ...], ...] = ()
    num_fmb_tokens: int = 8
    num_lcb_tokens: int = 8
    fm_rank: int = 16
    fmb_mlp: tuple[int, ...] = (256,)
    task_mlp: tuple[int, ...] = (128,)


class LatticeDense(nn.Module):
    """Lattice: ``dense(dense, pooled, sequences=None, masks=None, timestamps=None, domain=None) -> DenseOutput``.

    Args:
        num_dense: N.
        dense_arch: hidden widths of the dense-feature MLP.
        pooled: layout of the pooled sparse features.
        opts: the Lattice settings.
        sequence_dims: embedding dim of each event type (empty = no sequences).
        sequence_lengths: padded length L_e of each event type.
        num_tasks: T.
    """

    def __init__(
        self,
        num_dense: int,
        dense_arch: list[int],
        pooled: PooledLayout,
        opts: LatticeOptions,
        sequence_dims: Mapping[str, int] | None = None,
        sequence_lengths: Mapping[str, int] | None = None,
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        if opts.rope not in ("position", "time", "none"):
            raise ValueError(f"model.lattice.rope: expected position, time or none, got {opts.rope!r}")
        self.opts = opts
        d, norm, bias = opts.dim, opts.swish_norm, opts.bias
        self.groups = len(opts.domain_groups) or max(1, opts.untie_domains)
        self.register_buffer("group_of", group_lookup(opts.domain_groups), persistent=False)
        self.events = list(sequence_dims or {})
        self.max_lengths = {e: int((sequence_lengths or {})[e]) for e in self.events}
        self.processors = FeatureTokens(num_dense, pooled, d, dense_arch, opts.dense_tokens, norm, bias)
        self.seq_proj = nn.ModuleDict({e: SequenceTokens(dim_e, d, bias) for e, dim_e in (sequence_dims or {}).items()})
        self.tb = nn.ModuleList(
            nn.ModuleDict(
                {
                    e: TransformerBlock(
                        d,
                        opts.num_heads,
                        opts.ffn_dim,
                        opts.qk_norm,
                        opts.rope_base,
                        norm,
                        bias,
                        self.groups,
                        opts.backend,
                    )
                    for e in self.events
                }
            )
            for _ in range(opts.num_layers)
        )
        self.compress = nn.ModuleList(
            nn.ModuleDict({e: LinearCompressBlock(self.max_lengths[e], opts.seq_tokens) for e in self.events})
            for _ in range(opts.num_layers)
        )
        summaries = opts.seq_tokens * len(self.events)
        counts = [self.processors.num_tokens]
        blocks = []
        for _ in range(opts.num_layers):
            block = fusion_block(
                summaries + counts[-1],
                d,
                opts.num_fmb_tokens,
                opts.num_lcb_tokens,
                opts.fm_rank,
                list(opts.fmb_mlp),
                norm,
                bias,
                self.groups,
            )
            blocks.append(block)
            counts.append(block.num_out_tokens)
        self.dwfb = nn.ModuleList(blocks)
        self.token_counts = counts
        """Tokens of O_cd^(0) .. O_cd^(L)."""
        self.ecs = ExtendedContextStorage(counts[:-1], d, opts.ecs_map) if opts.ecs else None
        self.heads = nn.ModuleList(
            LatticeMLP(counts[-1] * d, [*opts.task_mlp, 1], norm, bias) for _ in range(num_tasks)
        )

    def forward(
        self,
        dense: torch.Tensor,
        pooled: torch.Tensor,
        sequences: dict[str, torch.Tensor] | None = None,
        masks: dict[str, torch.Tensor] | None = None,
        timestamps: dict[str, torch.Tensor] | None = None,
        domain: torch.Tensor | None = None,
    ) -> DenseOutput:
        """Logits ``[B, T]``, aux loss 0, no diagnostics.

        Args:
            dense: ``[B, N]`` dense features.
            pooled: ``[B, P]`` pooled sparse embeddings.
            sequences: ``[B, L_e, D_e]`` right-aligned event embeddings by event type (fp32; cast to
                ``pooled.dtype``); required when the model was built with event types, else ignored.
            masks: ``[B, L_e]`` bool, True at real events.
            timestamps: ``[B, L_e]`` int64 seconds (``rope: time`` only).
            domain: ``[B]`` int64 domain ids (``untie_domains > 0`` only).
        """
        domain_BG = domain_masks(domain, self.groups, self.group_of)
        x_BnD = self.processors(dense, pooled)
        s: dict[str, torch.Tensor] = {}
        positions: dict[str, torch.Tensor | None] = {}
        if self.events:
            if sequences is None or masks is None:
                raise ValueError(f"lattice was built with event sequences {self.events} but got none")
            for e in self.events:
                s[e] = cast(SequenceTokens, self.seq_proj[e])(sequences[e].to(pooled.dtype), masks[e])
                positions[e] = self._positions(masks[e], timestamps[e] if timestamps is not None else None)
        outputs = [x_BnD]
        for i in range(self.opts.num_layers):
            summaries = []
            for e in self.events:
                s[e] = self._tb(i, e)(s[e], masks[e], positions[e], domain_BG)  # type: ignore[index]
                summaries.append(self.compress[i][e](s[e]))  # type: ignore[index]
            if self.ecs is not None:
                extra = self.ecs.context(i + 1, outputs)
                if extra is not None:
                    x_BnD = x_BnD + extra
            x_BnD = self.dwfb[i](torch.cat([*summaries, x_BnD], dim=1), domain_BG)
            outputs.append(x_BnD)
        flat = x_BnD.flatten(1)
        logits = torch.cat([head(flat) for head in self.heads], dim=1)
        return logits, logits.new_zeros(()), {}

    def _tb(self, layer: int, event: str) -> TransformerBlock:
        return cast(TransformerBlock, self.tb[layer][event])  # type: ignore[index]

    def _positions(self, mask_BL: torch.Tensor, times_BL: torch.Tensor | None) -> torch.Tensor | None:
        """Rotary positions ``[B, L]``: slot index, log time gap (ROTE), or None (no rotary)."""
        if self.opts.rope == "position":
            return torch.arange(mask_BL.shape[1], device=mask_BL.device).float().expand(mask_BL.shape[0], -1)
        if self.opts.rope == "time":
            if times_BL is None:
                raise ValueError("model.lattice.rope: 'time' needs the sequences' timestamps, got None")
            return time_positions(times_BL, self.opts.rote_time_scale)
        return None

    def flops(
        self, seq_lengths: Mapping[str, int | Lengths] | None = None, executed: bool = False
    ) -> dict[str, FlopCount]:
        """FLOPs by part, forward and exact backward: per example, or summed over a batch.

        Keys: ``lattice/processors`` (sparse projections, dense MLP), ``lattice/seq_proj`` (event
        projections), ``lattice/tb`` (Transformer blocks), ``lattice/compress``, ``lattice/dwfb`` (the
        Wukong layers: FM, FMB MLPs, LCBs, residual maps), ``lattice/ecs``, ``lattice/heads``; a part the
        model does not have is left out. Untied layers count all G copies (every copy runs on every row).

        Args:
            seq_lengths: length per event type. Ints: one example at those lengths (default: each
                event's ``max_length``, what the padded implementation runs). ``Lengths``: a batch's real
                lengths; every count is then the sum over its examples (an event type left out counts at
                ``max_length`` in every example).
            executed: count what the attention kernel runs (SDPA's backward recomputes Q Kᵀ) instead of
                model FLOPs.
        """
        given = dict(seq_lengths or {})
        batch = [n for n in given.values() if isinstance(n, Lengths)]
        examples = batch[0].examples if batch else 1
        dwfb = FlopCount()
        for block in self.dwfb:
            for count in cast(WukongLayer, block).flops().values():
                dwfb = dwfb + count
        out: dict[str, FlopCount] = {"lattice/processors": self.processors.flops().scaled(examples)}
        if self.events:
            seq_proj, tb, compress = FlopCount(), FlopCount(), FlopCount()
            for e in self.events:
                n = given.get(e, self.max_lengths[e])
                lengths = n if isinstance(n, Lengths) else Lengths.full(n, examples)
                seq_proj = seq_proj + cast(SequenceTokens, self.seq_proj[e]).flops(lengths)
                for i in range(self.opts.num_layers):
                    tb = tb + self._tb(i, e).flops(lengths, executed)
                    compress = compress + matmul(self.opts.seq_tokens, lengths.tokens, self.opts.dim)
            if seq_proj.train:
                out["lattice/seq_proj"] = seq_proj
            out["lattice/tb"] = tb
            out["lattice/compress"] = compress
        out["lattice/dwfb"] = dwfb.scaled(examples)
        if self.ecs is not None and len(self.ecs.maps):
            out["lattice/ecs"] = self.ecs.flops().scaled(examples)
        heads = FlopCount()
        for head in self.heads:
            heads = heads + cast(LatticeMLP, head).flops()
        out["lattice/heads"] = heads.scaled(examples)
        return out
