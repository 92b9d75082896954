"""Config -> ``WukongDense``, and the config checks of the ``wukong`` registry entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recscale.configs.schema import JobConfig, ModelConfig
from recscale.modules.wukong.dense import WukongDense

if TYPE_CHECKING:
    from recscale.modules.registry import ModelInputs


def build_wukong(m: ModelConfig, inputs: ModelInputs) -> WukongDense:
    """The Wukong dense arch for ``model`` (``model.wukong`` + ``dense_arch`` / ``over_arch``)."""
    w = m.wukong
    dim = w.dim or inputs.pooled.uniform_dim()
    if dim is None:
        raise ValueError(
            "model.wukong.dim: the tables have different embedding dims "
            f"{sorted(set(inputs.pooled.feature_dims))}; set the token width explicitly"
        )
    return WukongDense(
        num_dense=inputs.num_dense,
        feature_names=list(inputs.pooled.feature_names),
        feature_dims=list(inputs.pooled.feature_dims),
        num_tasks=inputs.num_tasks,
        dim=dim,
        num_layers=w.num_layers,
        num_fmb_tokens=w.num_fmb_tokens,
        num_lcb_tokens=w.num_lcb_tokens,
        fm_rank=w.fm_rank,
        fmb_mlp=w.fmb_mlp,
        over_arch=m.over_arch,
        attentive_fm=w.attentive_fm,
        attentive_mlp=w.attentive_mlp,
        tokens_per_feature=w.tokens_per_feature,
        grouped_features=w.grouped_features,
        grouped_tokens=w.grouped_tokens,
        grouped_mlp=w.grouped_mlp,
        dense_arch=m.dense_arch,
        dense_tokens=w.dense_tokens,
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
    )


def check_wukong(cfg: JobConfig) -> list[str]:
    """Problems of ``model.wukong`` against the feature schema (``key.path: message`` lines)."""
    w = cfg.model.wukong
    out = []
    for key in ("num_fmb_tokens", "fm_rank", "grouped_tokens"):
        if getattr(w, key) < 1:
            out.append(f"model.wukong.{key}: expected >= 1, got {getattr(w, key)}")
    for key in ("num_layers", "num_lcb_tokens", "dense_tokens", "dim"):
        if getattr(w, key) < 0:
            out.append(f"model.wukong.{key}: expected >= 0, got {getattr(w, key)}")
    for key in ("fmb_mlp", "attentive_mlp", "grouped_mlp"):
        for i, width in enumerate(getattr(w, key)):
            if width <= 0:
                out.append(f"model.wukong.{key}[{i}]: expected a positive width, got {width}")
    if w.attentive_fm and w.num_lcb_tokens == 0:
        out.append(
            "model.wukong.attentive_fm: the attentive projection is computed from the LCB; set num_lcb_tokens > 0"
        )
    names = [f.name for f in cfg.data.features.sparse]
    for name, count in w.tokens_per_feature.items():
        if name not in names:
            out.append(f"model.wukong.tokens_per_feature.{name}: no sparse feature named {name!r}")
        if count < 1:
            out.append(f"model.wukong.tokens_per_feature.{name}: expected >= 1 tokens, got {count}")
    for i, name in enumerate(w.grouped_features):
        if name not in names:
            out.append(f"model.wukong.grouped_features[{i}]: no sparse feature named {name!r}")
        if name in w.tokens_per_feature:
            out.append(f"model.wukong.grouped_features[{i}]: {name!r} is also in tokens_per_feature")
    if cfg.data.features.dense and w.dense_tokens == 0:
        out.append("model.wukong.dense_tokens: the data has dense features; expected >= 1 tokens for them")
    if w.dim == 0:
        table_dims = {t.name: t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
        used = {table_dims[f.table] for f in cfg.data.features.sparse if f.table in table_dims}
        if len(used) > 1:
            out.append(
                f"model.wukong.dim: the sparse features have different embedding dims {sorted(used)}; set the "
                "token width (features of another width are then projected to it)"
            )
    return out
