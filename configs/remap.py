"""Checks of ``data.convert.fields`` and ``data.convert.graphhash`` (the converter's per-field row mappings)."""

from __future__ import annotations

from recscale.configs.schema import DataConfig

REMAPS = ("none", "modulo", "graphhash", "double_graphhash")


def remap_problems(data: DataConfig) -> list[str]:
    """Problems of the per-field remap options, as ``key.path: what is wrong (expected ...)`` lines."""
    out: list[str] = []
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
