"""``GCASequenceDense`` (arch ``gca_seq``): a two-domain sequence model with gated cross-attention.

Each domain's sequence (two event types of ``data.features.sequences``) is projected to width D and
encoded by its own stack of pre-norm transformer layers. GCA blocks let domain A query domain B
(and B query A when ``bidirectional``): one block after the first layer (``early``) or one after
every layer (``stack``). A context vector from the dense and pooled sparse features queries each
encoded sequence (target attention, one query), and the head MLP reads ``[context ‖ pooled A ‖
pooled B ‖ domain embedding]``. The ``baseline`` variants drop the GCA blocks; ``wider_baseline``
widens the encoder FFNs until the parameter count matches the ``gca`` variant (see ``build_gca_seq``).

Diagnostics: ``gca/abs_cos/<domain>``, the orthogonality measure of the blocks where that domain
is the query, averaged over blocks (``modules/gca/block.py``).

Legend: B batch, L sequence length, D width, N dense features, P pooled width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from recscale.modules.attention import (
    AttentionBackend,
    MaskSpec,
    attention,
    cross_attention_flops,
    merge_heads,
    nonempty_keys,
    split_heads,
)
from recscale.modules.flops import FlopCount, Lengths, linear, linears
from recscale.modules.gca.block import EncoderLayer, GatedCrossAttention
from recscale.modules.mlp import MLP
from recscale.modules.outputs import DenseOutput


class GCASequenceDense(nn.Module):
    """Two-domain sequence model: ``dense(dense, pooled, sequences, masks, timestamps, domain)``.

    Args:
        num_dense: N.
        pooled_dim: P.
        domains: the two event types (A, B).
        embedding_dim: dim of the sequence embeddings.
        max_lengths: padded length of each domain's sequence.
        dim: D.
        num_heads: attention heads.
        num_layers: encoder layers per domain.
        ffn_dim: encoder FFN hidden width.
        use_gca: build the GCA blocks.
        placement: ``early`` or ``stack``.
        bidirectional: B also queries A.
        gate: ``scalar`` or ``data``.
        gate_activation: ``sigmoid`` or ``tanh``.
        gate_init: initial gate pre-activation.
        layer_norm: LayerNorm in the GCA blocks.
        num_domains: values of the ``domain`` input.
        dense_arch: hidden widths of the context MLP's dense branch.
        over_arch: hidden widths of the head MLP.
        num_tasks: T.
        activation: MLP activation.
        dropout: head dropout.
        backend: attention kernel.
    """

    def __init__(
        self,
        num_dense: int,
        pooled_dim: int,
        domains: tuple[str, str],
        embedding_dim: int,
        max_lengths: dict[str, int],
        dim: int,
        num_heads: int,
        num_layers: int,
        ffn_dim: int,
        use_gca: bool = True,
        placement: str = "early",
        bidirectional: bool = True,
        gate: str = "scalar",
        gate_activation: str = "sigmoid",
        gate_init: float = 0.0,
        layer_norm: bool = True,
        num_domains: int = 2,
        dense_arch: list[int] | None = None,
        over_arch: list[int] | None = None,
        num_tasks: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
        super().__init__()
        self.domains = domains
        self.max_lengths = max_lengths
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_domains = num_domains
        self.backend = backend
        self.in_proj = nn.ModuleDict({d: nn.Linear(embedding_dim, dim) for d in domains})
        self.encoders = nn.ModuleDict(
            {
                d: nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, backend) for _ in range(num_layers))
                for d in domains
            }
        )
        self.gca_layers = [i for i in range(num_layers) if use_gca and (placement == "stack" or i == 0)]
        queries = domains if bidirectional else domains[:1]
        self.gca = nn.ModuleDict(
            {
                f"l{i}_{q}": GatedCrossAttention(dim, num_heads, gate, gate_activation, gate_init, layer_norm, backend)
                for i in self.gca_layers
                for q in queries
            }
        )
        self.dense_mlp = MLP(num_dense, list(dense_arch or [dim]), activation) if num_dense > 0 else None
        context_in = pooled_dim + (self.dense_mlp.out_dim if self.dense_mlp is not None else 0)
        self.context = nn.Linear(context_in, dim)
        self.pool_q = nn.ModuleDict({d: nn.Linear(dim, dim) for d in domains})
        self.pool_kv = nn.ModuleDict({d: nn.Linear(dim, 2 * dim) for d in domains})
        self.domain_emb = nn.Embedding(num_domains, dim) if num_domains > 1 else None
        head_in = dim * (3 + (1 if self.domain_emb is not None else 0))
        self.top = MLP(head_in, list(over_arch or []), activation, dropout)
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
        """Logits ``[B, T]``, aux loss 0, ``gca/abs_cos/<domain>`` diagnostics (timestamps unused)."""
        h = {
            d: self.in_proj[d](sequences[d].to(pooled.dtype)) * masks[d].unsqueeze(-1).to(pooled.dtype)
            for d in self.domains
        }
        cos: dict[str, list[torch.Tensor]] = {d: [] for d in self.domains}
        a, b = self.domains
        for i in range(self.num_layers):
            h = {d: self.encoders[d][i](h[d], masks[d]) for d in self.domains}  # type: ignore[index]
            if i in self.gca_layers:
                new = dict(h)
                for q, kv in ((a, b), (b, a)):
                    key = f"l{i}_{q}"
                    if key in self.gca:
                        new[q], c = self.gca[key](h[q], masks[q], h[kv], masks[kv])
                        cos[q].append(c)
                h = new
        parts = [self._context(dense, pooled)]
        for d in self.domains:
            parts.append(self._pool(d, parts[0], h[d], masks[d]))
        if self.domain_emb is not None:
            assert domain is not None, "gca_seq with num_domains > 1 needs the batch's domain column"
            parts.append(self.domain_emb(domain))
        logits = self.head(self.top(torch.cat(parts, dim=1)))
        diagnostics = {f"gca/abs_cos/{d}": torch.stack(c).mean() for d, c in cos.items() if c}
        return logits, logits.new_zeros(()), diagnostics

    def _context(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        parts = [pooled] if self.dense_mlp is None else [self.dense_mlp(dense), pooled]
        return self.context(torch.cat(parts, dim=1))

    def _pool(self, d: str, c_BD: torch.Tensor, h_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Target attention: the context vector queries the encoded sequence -> ``[B, D]``."""
        q_BH1d = split_heads(self.pool_q[d](c_BD).unsqueeze(1), self.num_heads)
        k_BLD, v_BLD = self.pool_kv[d](h_BLD).chunk(2, dim=-1)
        o = attention(
            q_BH1d,
            split_heads(k_BLD, self.num_heads),
            split_heads(v_BLD, self.num_heads),
            nonempty_keys(mask_BL),
            MaskSpec(),
            self.backend,
        )
        return merge_heads(o).squeeze(1)

    def flops(
        self, seq_lengths: Mapping[str, int | Lengths] | None = None, executed: bool = False
    ) -> dict[str, FlopCount]:
        """FLOPs by module: per example (ints, default each domain's max_length), or summed over a batch.

        With ``Lengths`` (a batch's real lengths) every count is the sum over its examples, each at
        its own lengths (a domain left out counts at max_length in every example).
        """
        given = dict(seq_lengths or {})
        batch = [n for n in given.values() if isinstance(n, Lengths)]
        examples = batch[0].examples if batch else 1
        lengths = {}
        for d in self.domains:
            n = given.get(d, self.max_lengths[d])
            lengths[d] = n if isinstance(n, Lengths) else Lengths.full(n, examples)
        backend = self.backend if executed else None
        out: dict[str, FlopCount] = {}
        if self.dense_mlp is not None:
            out["context/dense"] = linears(self.dense_mlp, input_grad=False).scaled(examples)
        out["context/linear"] = linear(self.context.in_features, self.context.out_features).scaled(examples)
        a, b = self.domains
        for d in self.domains:
            proj, n = self.in_proj[d], lengths[d]
            out[f"{d}/in_proj"] = linear(proj.in_features, proj.out_features, tokens=n.tokens)
            for i, layer in enumerate(self.encoders[d]):  # type: ignore[arg-type]
                out[f"{d}/layer{i}"] = layer.flops(n, executed)
            width = proj.out_features
            query = linear(width, width).scaled(examples)  # the context vector's query, once per example
            out[f"{d}/pool"] = (
                query + linear(width, 2 * width, tokens=n.tokens) + cross_attention_flops(1, n, width, backend)
            )
        for key, block in self.gca.items():
            q = key.split("_", 1)[1]
            kv = b if q == a else a
            out[f"gca/{key}"] = cast(GatedCrossAttention, block).flops(lengths[q], lengths[kv], executed)
        out["top"] = linears(self.top).scaled(examples)
        out["head"] = linear(self.head.in_features, self.head.out_features).scaled(examples)
        return out
