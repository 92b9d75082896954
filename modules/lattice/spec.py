"""Config -> ``LatticeDense``, and the config checks of the ``lattice`` registry entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recscale.configs.schema import JobConfig, ModelConfig
from recscale.modules.attention import AttentionBackend
from recscale.modules.kunlun.spec import check_sequences
from recscale.modules.lattice.model import LatticeDense, LatticeOptions

if TYPE_CHECKING:
    from recscale.modules.registry import ModelInputs


def build_lattice(m: ModelConfig, inputs: ModelInputs) -> LatticeDense:
    """The Lattice dense arch for ``model`` (``model.lattice`` + ``model.dense_arch``)."""
    c = m.lattice
    return LatticeDense(
        num_dense=inputs.num_dense,
        dense_arch=list(m.dense_arch),
        pooled=inputs.pooled,
        opts=LatticeOptions(
            dim=c.dim,
            num_layers=c.num_layers,
            dense_tokens=c.dense_tokens,
            seq_tokens=c.seq_tokens,
            num_heads=c.num_heads,
            ffn_dim=c.ffn_dim or 4 * c.dim,
            rope=c.rope,
            rope_base=c.rope_base,
            rote_time_scale=c.rote_time_scale,
            qk_norm=c.qk_norm,
            backend=AttentionBackend(c.attention_backend),
            ecs=c.ecs,
            ecs_map=c.ecs_map,
            swish_norm=c.swish_norm,
            bias=c.bias,
            untie_domains=len(c.domain_groups) or c.untie_domains,
            domain_groups=tuple(tuple(g) for g in c.domain_groups),
            num_fmb_tokens=c.num_fmb_tokens,
            num_lcb_tokens=c.num_lcb_tokens,
            fm_rank=c.fm_rank,
            fmb_mlp=tuple(c.fmb_mlp),
            task_mlp=tuple(c.task_mlp),
        ),
        sequence_dims=inputs.sequence_dims,
        sequence_lengths=inputs.sequence_lengths,
        num_tasks=inputs.num_tasks,
    )


def check_lattice(cfg: JobConfig) -> list[str]:
    """Problems of ``model.lattice`` against the feature schema (``key.path: message`` lines)."""
    c = cfg.model.lattice
    f = cfg.data.features
    out = check_sequences(cfg, "lattice") if f.sequences else []  # sequences are optional
    for key in ("dim", "num_layers", "seq_tokens", "num_heads", "num_fmb_tokens", "fm_rank"):
        if getattr(c, key) < 1:
            out.append(f"model.lattice.{key}: expected >= 1, got {getattr(c, key)}")
    for key in ("dense_tokens", "ffn_dim", "num_lcb_tokens", "untie_domains"):
        if getattr(c, key) < 0:
            out.append(f"model.lattice.{key}: expected >= 0, got {getattr(c, key)}")
    for key in ("fmb_mlp", "task_mlp"):
        for i, width in enumerate(getattr(c, key)):
            if width < 1:
                out.append(f"model.lattice.{key}[{i}]: expected a positive width, got {width}")
    for i, width in enumerate(cfg.model.dense_arch):
        if width < 1:
            out.append(f"model.dense_arch[{i}]: expected a positive width, got {width}")
    for key in ("rope_base", "rote_time_scale"):
        if getattr(c, key) <= 0:
            out.append(f"model.lattice.{key}: expected > 0, got {getattr(c, key)}")
    if f.dense and c.dense_tokens == 0:
        out.append("model.lattice.dense_tokens: the data has dense features; expected >= 1 tokens for them")
    if f.sequences and c.num_heads >= 1 and c.dim % c.num_heads:
        out.append(f"model.lattice.num_heads: {c.num_heads} heads do not divide model.lattice.dim {c.dim}")
    if c.rope == "time" and f.sequences and not all(q.timestamps for q in f.sequences):
        missing = [q.name for q in f.sequences if not q.timestamps]
        out.append(f"model.lattice.rope: 'time' needs timestamps on every sequence; none on {missing}")
    if c.domain_groups:
        members = sorted(d for g in c.domain_groups for d in g)
        if members != list(range(len(members))) or not all(c.domain_groups):
            out.append(
                "model.lattice.domain_groups: expected non-empty groups that together hold each domain id "
                f"0..K-1 once, got {c.domain_groups}"
            )
        if c.untie_domains not in (0, len(c.domain_groups)):
            out.append(
                f"model.lattice.untie_domains: {c.untie_domains} copies, but domain_groups has "
                f"{len(c.domain_groups)} groups; expected 0 or {len(c.domain_groups)}"
            )
        if not f.domain:
            out.append("model.lattice.domain_groups: needs the domain column (data.features.domain)")
    if c.untie_domains > 0 and not f.domain:
        out.append(
            f"model.lattice.untie_domains: {c.untie_domains} domain groups need the domain column "
            "(data.features.domain); set 0 to tie"
        )
    return out
