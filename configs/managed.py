"""Checks of ``embeddings.tables[i].collisions: managed`` (tables whose rows are managed-collision slots)."""

from __future__ import annotations

from recscale.configs.schema import JobConfig

EVICTIONS = ("lfu", "lru", "distance_lfu")


def managed_tables(cfg: JobConfig) -> list[str]:
    """Names of the ``collisions: managed`` tables, in config order."""
    return [t.name for t in cfg.embeddings.tables if t.collisions == "managed"]


def managed_problems(cfg: JobConfig) -> list[str]:
    """Problems of the managed-collision tables, as ``key.path: what is wrong (expected ...)`` lines."""
    out: list[str] = []
    f = cfg.data.features
    for i, t in enumerate(cfg.embeddings.tables):
        where = f"embeddings.tables[{i}] ({t.name})"
        if t.collisions not in ("none", "managed"):
            out.append(f"{where}.collisions: expected none or managed, got {t.collisions!r}")
            continue
        if t.collisions != "managed":
            continue
        m = t.managed
        if t.num_embeddings < 2:
            out.append(
                f"{where}.num_embeddings: a managed table needs at least 2 rows (the last is the slot of ids "
                f"not admitted), got {t.num_embeddings}"
            )
        if m.eviction not in EVICTIONS:
            out.append(f"{where}.managed.eviction: expected one of {', '.join(EVICTIONS)}, got {m.eviction!r}")
        if m.eviction_interval < 1:
            out.append(f"{where}.managed.eviction_interval: expected >= 1 step, got {m.eviction_interval}")
        if m.distance_decay <= 0:
            out.append(f"{where}.managed.distance_decay: expected > 0, got {m.distance_decay}")
        if not 2 <= m.input_hash_size <= 2**63 - 1:
            out.append(f"{where}.managed.input_hash_size: expected 2 .. 2**63 - 1, got {m.input_hash_size}")
        if m.evicted_rows not in ("reset", "keep"):
            out.append(f"{where}.managed.evicted_rows: expected reset or keep, got {m.evicted_rows!r}")
        for j, s in enumerate(f.sparse):
            if s.table == t.name and s.hashing != "none":
                out.append(
                    f"data.features.sparse[{j}] ({s.name}).hashing: table {t.name!r} is managed, so its features "
                    f"bring raw ids (expected none, got {s.hashing!r})"
                )
        for j, q in enumerate(f.sequences):
            if q.table == t.name:
                out.append(
                    f"data.features.sequences[{j}] ({q.name}).table: table {t.name!r} is managed; managed "
                    "tables serve pooled (sparse) features only"
                )
    return out
