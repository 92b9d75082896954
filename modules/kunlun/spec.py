"""Config -> ``KunlunDense``, and the config checks of the ``kunlun`` registry entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from recscale.configs.schema import JobConfig, KunlunConfig, KunlunEventConfig, ModelConfig
from recscale.modules.attention import AttentionBackend
from recscale.modules.kunlun.model import KunlunDense, KunlunOptions
from recscale.modules.kunlun.mowe import MoWEOptions
from recscale.modules.kunlun.sequence import EventSpec, SequenceOptions

if TYPE_CHECKING:
    from recscale.modules.registry import ModelInputs


def resolve_events(k: KunlunConfig, dims: dict[str, int], lengths: dict[str, int]) -> list[EventSpec]:
    """Per-event settings with the ``model.kunlun`` defaults filled in, in sequence order."""
    listed = {e.name: e for e in k.events}
    out = []
    for name, emb_dim in dims.items():
        e = listed.get(name, KunlunEventConfig(name=name))
        out.append(
            EventSpec(
                name=name,
                embedding_dim=emb_dim,
                dim=e.dim or k.dim,
                num_heads=e.num_heads or k.num_heads,
                num_layers=e.num_layers or k.num_layers,
                num_seeds=e.num_seeds or k.num_seeds,
                num_tokens=e.num_summary_tokens or k.num_summary_tokens,
                window=k.window if e.window < 0 else e.window,
                max_length=lengths[name],
            )
        )
    return out


def build_kunlun(m: ModelConfig, inputs: ModelInputs) -> KunlunDense:
    """The Kunlun dense arch for ``model`` (``model.kunlun`` + ``dense_arch`` / ``over_arch``)."""
    k = m.kunlun
    events = resolve_events(k, inputs.sequence_dims, inputs.sequence_lengths)
    if not events:
        raise ValueError("data.features.sequences: kunlun needs at least one event sequence")
    mowe = k.mowe
    return KunlunDense(
        num_dense=inputs.num_dense,
        dense_arch=m.dense_arch,
        pooled=inputs.pooled,
        events=events,
        opts=KunlunOptions(
            dim=k.dim,
            num_layers=k.num_layers,
            dense_tokens=k.dense_tokens,
            num_sum_tokens=k.num_sum_tokens,
            xsum_gate=k.xsum_gate,
            rope=k.rope,
            rote_time_scale=k.rote_time_scale,
        ),
        seq_opts=SequenceOptions(
            context_dim=k.dim,
            num_context_tokens=k.num_sum_tokens,
            kv_tokens=k.gdpa_kv_tokens,
            compskip=k.compskip,
            gdpa_activation=k.gdpa_activation,
            gdpa_temperature=k.gdpa_temperature,
            gdpa_scale=k.gdpa_scale,
            kron_terms=k.hsp_kron_terms,
            norm=k.norm,
            rope=k.rope != "none",
            rope_base=k.rope_base,
            causal=k.swa_causal,
            backend=AttentionBackend(k.attention_backend),
        ),
        mowe=MoWEOptions(
            num_experts=mowe.num_experts,
            partition=mowe.partition,
            top_k=mowe.top_k,
            num_layers=mowe.num_layers,
            fm_rank=mowe.fm_rank,
            fmb_mlp=list(mowe.fmb_mlp),
            load_balance_weight=mowe.load_balance_weight,
            activation=m.activation,
            expert_compute=mowe.expert_compute,
        ),
        over_arch=m.over_arch,
        num_tasks=inputs.num_tasks,
        activation=m.activation,
        dropout=m.dropout,
    )


def check_sequences(cfg: JobConfig, arch: str) -> list[str]:
    """Checks every sequence model needs: sequences present, unique names usable as module keys, one dim."""
    out = []
    seqs = cfg.data.features.sequences
    if not seqs:
        out.append(f"data.features.sequences: {arch} needs at least one event sequence")
    seen: set[str] = set()
    for i, q in enumerate(seqs):
        if q.name in seen:
            out.append(f"data.features.sequences[{i}].name: duplicate event type {q.name!r}")
        seen.add(q.name)
        if not q.name or "." in q.name or hasattr(nn.ModuleDict(), q.name):
            out.append(
                f"data.features.sequences[{i}].name: {q.name!r} cannot name a module (empty, has a '.', or is an "
                "nn.ModuleDict attribute such as 'keys')"
            )
    dims = {t.name: t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
    used = sorted({dims[q.table] for q in seqs if q.table in dims})
    if len(used) > 1:
        out.append(
            f"embeddings.tables: the tables read by data.features.sequences must share one dim "
            f"(one TorchRec EmbeddingCollection), got {used}"
        )
    return out


def check_kunlun(cfg: JobConfig) -> list[str]:
    """Problems of ``model.kunlun`` against the feature schema (``key.path: message`` lines)."""
    k = cfg.model.kunlun
    out = check_sequences(cfg, "kunlun")
    for key in (
        "dim",
        "num_layers",
        "num_heads",
        "num_seeds",
        "num_summary_tokens",
        "num_sum_tokens",
        "hsp_kron_terms",
    ):
        if getattr(k, key) < 1:
            out.append(f"model.kunlun.{key}: expected >= 1, got {getattr(k, key)}")
    for key in ("window", "dense_tokens", "gdpa_kv_tokens"):
        if getattr(k, key) < 0:
            out.append(f"model.kunlun.{key}: expected >= 0, got {getattr(k, key)}")
    if cfg.data.features.dense and k.dense_tokens == 0:
        out.append("model.kunlun.dense_tokens: the data has dense features; expected >= 1 tokens for them")
    if k.rote_time_scale <= 0:
        out.append(f"model.kunlun.rote_time_scale: expected > 0 seconds, got {k.rote_time_scale}")
    if k.rope == "time" and not any(q.timestamps for q in cfg.data.features.sequences):
        out.append("model.kunlun.rope: 'time' (ROTE) needs data.features.sequences[].timestamps")
    names = [q.name for q in cfg.data.features.sequences]
    if k.events:
        listed = [e.name for e in k.events]
        for i, e in enumerate(k.events):
            if e.name not in names:
                out.append(f"model.kunlun.events[{i}].name: no sequence named {e.name!r}; sequences: {names}")
            if listed.count(e.name) > 1:
                out.append(f"model.kunlun.events[{i}].name: {e.name!r} is listed twice")
        for name in names:
            if name not in listed:
                out.append(f"model.kunlun.events: sequence {name!r} is missing (list every sequence, or none)")
    dims = {t.name: t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
    lengths = {q.name: q.max_length for q in cfg.data.features.sequences}
    seq_dims = {q.name: dims.get(q.table, cfg.embeddings.dim) for q in cfg.data.features.sequences}
    for i, e in enumerate(resolve_events(k, seq_dims, lengths)):
        where = f"model.kunlun.events[{i}]" if k.events else f"model.kunlun (event {e.name!r})"
        if min(e.dim, e.num_heads, e.num_layers, e.num_seeds, e.num_tokens) < 1:
            out.append(f"{where}: dim, num_heads, num_layers, num_seeds and num_summary_tokens must be >= 1")
            continue
        if e.dim % e.num_heads:
            out.append(f"{where}.num_heads: {e.num_heads} heads do not divide the width {e.dim}")
        elif k.rope != "none" and (e.dim // e.num_heads) % 2:
            out.append(f"{where}.num_heads: rotary encoding needs an even head dim, got {e.dim // e.num_heads}")
        if e.num_layers > k.num_layers:
            out.append(f"{where}.num_layers: {e.num_layers} exceeds model.kunlun.num_layers {k.num_layers}")
        if e.window < 0:
            out.append(f"{where}.window: expected >= -1, got {e.window}")
    m = k.mowe
    events = resolve_events(k, seq_dims, lengths)
    n_in = k.num_sum_tokens + sum(e.num_tokens for e in events)
    n_out = (k.dense_tokens if cfg.data.features.dense else 0) + len(cfg.data.features.sparse)
    if m.partition != "routed" and m.num_experts > min(n_in, n_out):
        out.append(
            f"model.kunlun.mowe.num_experts: {m.num_experts} experts on token partitions need at least as many "
            f"interaction tokens; got {n_in} in and {n_out} out"
        )
    if m.num_experts < 1:
        out.append(f"model.kunlun.mowe.num_experts: expected >= 1, got {m.num_experts}")
    elif m.partition == "routed" and not 1 <= m.top_k <= m.num_experts:
        out.append(f"model.kunlun.mowe.top_k: expected 1..{m.num_experts}, got {m.top_k}")
    if m.num_layers < 1 or m.fm_rank < 1:
        out.append("model.kunlun.mowe: num_layers and fm_rank must be >= 1")
    ep = cfg.sharding.ep_size
    if ep > 1 and m.partition != "routed":
        out.append(
            f"sharding.ep_size: {ep} needs model.kunlun.mowe.partition: routed (got {m.partition!r}: every expert "
            "runs on every example there, so there are no routes to send to other ranks)"
        )
    if ep > 1 and cfg.sharding.moe.exchange != "dropless":
        out.append(
            f"sharding.moe.exchange: {cfg.sharding.moe.exchange!r} is HiLoMoE's (DeepSpeed's capacity-padded layer); "
            "Kunlun's MoWE experts exchange their tokens dropless"
        )
    if ep > 1 and m.num_experts % ep:
        out.append(
            f"model.kunlun.mowe.num_experts: {m.num_experts} experts cannot be split over sharding.ep_size {ep} ranks"
        )
    return out
