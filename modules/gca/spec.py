"""Config -> ``GCASequenceDense`` (arch ``gca_seq``), the parameter-matched wider baseline, and checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from recscale.configs.schema import GCAConfig, JobConfig, ModelConfig
from recscale.modules.attention import AttentionBackend
from recscale.modules.gca.model import GCASequenceDense
from recscale.modules.kunlun.spec import check_sequences

if TYPE_CHECKING:
    from recscale.modules.registry import ModelInputs


def gca_domains(g: GCAConfig, names: list[str]) -> tuple[str, str]:
    """The (A, B) sequences: ``model.gca.domains`` or the first two sequences."""
    chosen = g.domains or names[:2]
    if len(chosen) != 2:
        raise ValueError(f"model.gca.domains: expected two sequences (domain A, domain B), got {chosen}")
    return chosen[0], chosen[1]


def _build(m: ModelConfig, inputs: ModelInputs, use_gca: bool, ffn_dim: int) -> GCASequenceDense:
    g = m.gca
    domains = gca_domains(g, list(inputs.sequence_dims))
    return GCASequenceDense(
        num_dense=inputs.num_dense,
        pooled_dim=inputs.pooled.total_dim,
        domains=domains,
        embedding_dim=inputs.sequence_dims[domains[0]],
        max_lengths={d: inputs.sequence_lengths[d] for d in domains},
        dim=g.dim,
        num_heads=g.num_heads,
        num_layers=g.num_layers,
        ffn_dim=ffn_dim,
        use_gca=use_gca,
        placement=g.placement,
        bidirectional=g.bidirectional,
        gate=g.gate,
        gate_activation=g.gate_activation,
        gate_init=g.gate_init,
        layer_norm=g.layer_norm,
        num_domains=g.num_domains,
        dense_arch=m.dense_arch,
        over_arch=m.over_arch,
        num_tasks=inputs.num_tasks,
        activation=m.activation,
        dropout=m.dropout,
        backend=AttentionBackend(g.attention_backend),
    )


def num_params(module: torch.nn.Module) -> int:
    """Parameter count."""
    return sum(p.numel() for p in module.parameters())


def matched_ffn_dim(m: ModelConfig, inputs: ModelInputs) -> int:
    """FFN width of the baseline whose parameter count is closest to (not below) the ``gca`` variant's.

    Parameters grow linearly with the FFN width, so two meta-device builds give the slope.
    """
    with torch.device("meta"):
        target = num_params(_build(m, inputs, True, m.gca.ffn_dim))
        p0 = num_params(_build(m, inputs, False, m.gca.ffn_dim))
        p1 = num_params(_build(m, inputs, False, m.gca.ffn_dim + 1))
    per_unit = p1 - p0
    extra = max(0, target - p0)
    return m.gca.ffn_dim + -(-extra // per_unit)


def build_gca_seq(m: ModelConfig, inputs: ModelInputs) -> GCASequenceDense:
    """The ``gca_seq`` dense arch in the variant ``model.gca.variant`` asks for."""
    variant = m.gca.variant
    if variant == "gca":
        return _build(m, inputs, True, m.gca.ffn_dim)
    if variant == "baseline":
        return _build(m, inputs, False, m.gca.ffn_dim)
    if variant == "wider_baseline":
        return _build(m, inputs, False, matched_ffn_dim(m, inputs))
    raise ValueError(f"model.gca.variant: unknown {variant!r}; expected gca, baseline or wider_baseline")


def check_gca_seq(cfg: JobConfig) -> list[str]:
    """Problems of ``model.gca`` against the feature schema (``key.path: message`` lines)."""
    g = cfg.model.gca
    out = check_sequences(cfg, "gca_seq")
    names = [q.name for q in cfg.data.features.sequences]
    if g.domains:
        if len(g.domains) != 2 or len(set(g.domains)) != 2:
            out.append(f"model.gca.domains: expected two different sequence names, got {g.domains}")
        for i, name in enumerate(g.domains):
            if name not in names:
                out.append(f"model.gca.domains[{i}]: no sequence named {name!r}; sequences: {names}")
    elif len(names) < 2:
        out.append(f"data.features.sequences: gca_seq needs two sequences (domain A and B), got {names}")
    for key in ("dim", "num_heads", "num_layers", "ffn_dim", "num_domains"):
        if getattr(g, key) < 1:
            out.append(f"model.gca.{key}: expected >= 1, got {getattr(g, key)}")
    if g.num_heads >= 1 and g.dim % g.num_heads:
        out.append(f"model.gca.num_heads: {g.num_heads} heads do not divide model.gca.dim {g.dim}")
    if g.num_domains > 1 and not cfg.data.features.domain:
        out.append(f"model.gca.num_domains: {g.num_domains} domains need data.features.domain (a domain column)")
    return out
