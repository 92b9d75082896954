"""Checks of ``data.convert.fields`` and ``data.convert.graphhash`` (the converter's per-field row mappings).

``remap: raw`` writes raw 64-bit ids, which only a ``collisions: managed`` table accepts; conversely, a
feature on a managed table must be converted with ``remap: raw`` (any other rule would write rows into a
table whose rows are slots). The first rule is checked with the config (``remap_problems``), the second only
when a conversion runs (``convert_problems``, which checks both): a training job on already converted data
needs no ``fields``.
"""

from __future__ import annotations

from recscale.configs.schema import DataConfig, EmbeddingsConfig

REMAPS = ("none", "modulo", "graphhash", "double_graphhash", "raw")


def _managed(embeddings: EmbeddingsConfig) -> set[str]:
    return {t.name for t in embeddings.tables if t.collisions == "managed"}


def remap_problems(data: DataConfig, embeddings: EmbeddingsConfig | None = None) -> list[str]:
    """Problems of the per-field remap options, as ``key.path: what is wrong (expected ...)`` lines.

    With ``embeddings``, a ``remap: raw`` field's table must be ``collisions: managed``.
    """
    out: list[str] = [] if embeddings is None else _raw_on_plain_tables(data, embeddings)
    c, f = data.convert, data.features
    sparse = {s.name for s in f.sparse}
    graph_fields = []
    hash_features: list[str] = []
    for name, field in c.fields.items():
        key = f"data.convert.fields.{name}"
        if name not in sparse:
            out.append(f"{key}: {name!r} is not a sparse feature (expected one of data.features.sparse)")
        if field.remap not in REMAPS:
            out.append(f"{key}.remap: expected one of {', '.join(REMAPS)}, got {field.remap!r}")
        if field.remap in ("graphhash", "double_graphhash"):
            graph_fields.append(name)
        if field.remap == "double_graphhash":
            if field.hash_feature not in sparse or field.hash_feature in c.fields:
                out.append(
                    f"{key}.hash_feature: {field.hash_feature!r} must name another sparse feature of "
                    "data.features.sparse that is not itself in data.convert.fields"
                )
            hash_features.append(field.hash_feature)
        elif field.hash_feature:
            out.append(f"{key}.hash_feature: only remap: double_graphhash has a hash feature")
    if len(set(hash_features)) < len(hash_features):
        out.append("data.convert.fields: two fields name the same hash_feature")
    if not graph_fields:
        return out
    g = c.graphhash
    for side in ("user", "item"):
        if getattr(g, side) not in sparse:
            out.append(
                f"data.convert.graphhash.{side}: expected the {side}-side sparse feature (GraphHash builds the "
                f"user-item graph), got {getattr(g, side)!r}"
            )
    if g.user == g.item:
        out.append("data.convert.graphhash: user and item must be two different features")
    for name in graph_fields:
        if name not in (g.user, g.item):
            out.append(
                f"data.convert.fields.{name}.remap: GraphHash maps only data.convert.graphhash.user or .item, "
                f"not {name!r}"
            )
    if g.resolution <= 0:
        out.append(f"data.convert.graphhash.resolution: expected > 0, got {g.resolution}")
    if not 0 <= g.cold_fraction <= 1:
        out.append(f"data.convert.graphhash.cold_fraction: expected a fraction in [0, 1], got {g.cold_fraction}")
    if g.min_cold_rows < 1:
        out.append(f"data.convert.graphhash.min_cold_rows: expected >= 1, got {g.min_cold_rows}")
    if g.label and g.label not in f.labels:
        out.append(f"data.convert.graphhash.label: {g.label!r} is not one of data.features.labels")
    return out


def _raw_on_plain_tables(data: DataConfig, embeddings: EmbeddingsConfig) -> list[str]:
    """A ``remap: raw`` field whose table is not ``collisions: managed``."""
    managed = _managed(embeddings)
    tables = {s.name: s.table for s in data.features.sparse}
    return [
        f"data.convert.fields.{name}.remap: raw writes raw 64-bit ids, so table {tables[name]!r} must have "
        "collisions: managed (expected a managed table, or remap: modulo for rows of a plain one)"
        for name, field in data.convert.fields.items()
        if field.remap == "raw" and name in tables and tables[name] not in managed
    ]


def convert_problems(data: DataConfig, embeddings: EmbeddingsConfig) -> list[str]:
    """The managed-table rules of a conversion (``remap: raw`` exactly on the managed tables' features)."""
    out = _raw_on_plain_tables(data, embeddings)
    managed = _managed(embeddings)
    hashed = {
        f.hash_feature: f"the double_graphhash hash feature of {name!r}"
        for name, f in data.convert.fields.items()
        if f.remap == "double_graphhash"
    }
    for s in data.features.sparse:
        if s.table not in managed:
            continue
        field = data.convert.fields.get(s.name)
        rule: str = field.remap if field is not None else "none (the categorical encoding)"
        rule = hashed.get(s.name, rule)
        if rule != "raw":
            out.append(
                f"data.convert.fields.{s.name}.remap: table {s.table!r} is managed (collisions: managed), so the "
                f"converter must write raw ids (expected raw, got {rule})"
            )
    return out
