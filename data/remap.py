"""The converter's per-field row mappings other than ``categorical`` (``data.convert.fields``).

A field listed there gets its rows from its raw key (the integer itself in ``integer`` mode, else the
64-bit hash of the text; an empty value has key 0) instead of the ``categorical`` encoding:

* ``modulo``: key mod the table's rows;
* ``graphhash``: the row of the key's community in the training user-item graph (``data.graphhash``),
  or a row of the hashed cold block when the key had no positive training row;
* ``double_graphhash``: ``graphhash``, plus ``hash_feature`` filled from the same raw column with
  SplitMix64(key) mod its table's rows (the model gets both as two features on two tables).
* ``raw``: the key itself with the top bit cleared, ``key & (2**63 - 1)`` (an int64 >= 0, no vocabulary,
  no modulo), for a ``collisions: managed`` table whose rows the model hands out as slots.

The community maps are written to ``OUT/graphhash/<field>.npz`` beside ``OUT/vocab/``, reused by ``--vocab``
and copied into exported artifacts, whose ``serve.py`` applies the same rules to raw rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recscale.configs.schema import DataConfig, EmbeddingsConfig
from recscale.data.columns import table_rows
from recscale.data.errors import DataError
from recscale.data.graphhash import CommunityMap, EdgeCounter, build_maps
from recscale.data.hashing import mix64
from recscale.data.raw import RawRows

REMAP_DIR = "graphhash"
"""Folder of the community maps beside the converter's ``vocab/``."""
GRAPH_REMAPS = ("graphhash", "double_graphhash")
RAW_ID_MASK = np.uint64(2**63 - 1)
"""``remap: raw`` keeps a key's low 63 bits, so the id is a non-negative int64."""


def hash_sources(data: DataConfig) -> dict[str, str]:
    """``double_graphhash`` hash features -> the raw column they are filled from."""
    return {
        f.hash_feature: name
        for name, f in data.convert.fields.items()
        if f.remap == "double_graphhash" and f.hash_feature
    }


def source_column(data: DataConfig, feature: str) -> str:
    """The raw input column a sparse feature is read from (itself, unless it is a hash feature)."""
    return hash_sources(data).get(feature, feature)


class FieldRemaps:
    """The rules of ``data.convert.fields`` for one conversion, and the community maps once built.

    ``kinds``: feature -> ``modulo`` | ``graphhash`` | ``hash`` (a hash feature) | ``raw``; an unlisted
    feature uses ``categorical``.
    """

    def __init__(self, data: DataConfig, embeddings: EmbeddingsConfig) -> None:
        self.data = data
        rows = table_rows(embeddings)
        self.rows = {s.name: rows[s.table] for s in data.features.sparse}
        self.tables = {s.name: s.table for s in data.features.sparse}
        self.kinds: dict[str, str] = {}
        for name, f in data.convert.fields.items():
            if f.remap in ("modulo", "raw"):
                self.kinds[name] = f.remap
            elif f.remap in GRAPH_REMAPS:
                self.kinds[name] = "graphhash"
                if f.remap == "double_graphhash":
                    self.kinds[f.hash_feature] = "hash"
        self.maps: dict[str, CommunityMap] = {}
        self.graph: dict[str, Any] = {}

    @property
    def needs_graph(self) -> bool:
        """Whether some field reads community rows."""
        return "graphhash" in self.kinds.values()

    @property
    def raw(self) -> set[str]:
        """The ``remap: raw`` features (no vocabulary, no rows: raw ids)."""
        return {name for name, kind in self.kinds.items() if kind == "raw"}

    def add_rows(self, edges: EdgeCounter, raw: RawRows, train: np.ndarray) -> None:
        """Count the user-item pairs of the positive training rows of ``raw`` (``train``: ``[n]`` bool)."""
        g, f = self.data.convert.graphhash, self.data.features
        names = [s.name for s in f.sparse]
        user, item = names.index(g.user), names.index(g.item)
        label = raw.labels[:, f.labels.index(g.label or f.labels[0])]
        keep = train & (label == 1) & ~raw.missing[user] & ~raw.missing[item]
        edges.add(raw.keys[user][keep], raw.keys[item][keep])

    def build(self, edges: EdgeCounter) -> None:
        """Cluster the graph and check that the tables hold the rows it needs."""
        g = self.data.convert.graphhash
        user_map, item_map, self.graph = build_maps(edges, g)
        for name, kind in self.kinds.items():
            if kind == "graphhash":
                self.maps[name] = user_map if name == g.user else item_map
        self._check_rows()

    def _check_rows(self) -> None:
        for name, found in self.maps.items():
            if self.rows[name] < found.size:
                table = self.tables[name]
                raise DataError(
                    f"column {name!r}: GraphHash needs {found.size} rows ({found.communities} communities + "
                    f"{found.cold} cold rows) but table {table!r} has {self.rows[name]}; set "
                    f"embeddings.tables[{table}].num_embeddings to {found.size}"
                )

    def load(self, folder: Path) -> None:
        """Use the maps of an earlier conversion (``folder`` = its ``graphhash/``)."""
        for name, kind in self.kinds.items():
            if kind != "graphhash":
                continue
            path = folder / f"{name}.npz"
            if not path.is_file():
                raise DataError(f"{path}: no GraphHash map for column {name!r} (expected the earlier conversion's)")
            self.maps[name] = CommunityMap.load(path)
        self.graph = {"reused": str(folder)}
        self._check_rows()

    def save(self, folder: Path) -> None:
        """Write the maps into ``folder`` (created when there are any)."""
        if self.maps:
            folder.mkdir()
            for name, found in self.maps.items():
                found.save(folder / f"{name}.npz")

    def encode(self, name: str, keys: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
        """Rows ``[n]`` int64 of feature ``name``'s keys ``[n]`` (uint64) by its rule."""
        keys = keys.astype(np.uint64)
        if missing is not None:
            keys = np.where(missing, np.uint64(0), keys)
        kind, rows = self.kinds[name], self.rows[name]
        if kind == "raw":
            return (keys & RAW_ID_MASK).astype(np.int64)
        if kind == "modulo":
            return (keys % np.uint64(rows)).astype(np.int64)
        if kind == "hash":
            return (mix64(keys) % np.uint64(rows)).astype(np.int64)
        return self.maps[name].lookup(keys)

    def describe(self, name: str, distinct: int | None) -> dict[str, Any]:
        """What the rule of ``name`` used, against a full table of its ``distinct`` training values + 2."""
        kind, rows = self.kinds[name], self.rows[name]
        entry: dict[str, Any] = {"remap": kind, "table_rows": rows}
        if kind == "raw":  # the table's rows are slots: no rows needed or saved to report
            return entry | ({"distinct_values": distinct} if distinct is not None else {})
        if kind == "graphhash":
            found = self.maps[name]
            entry |= {"rows_needed": found.size, "communities": found.communities, "cold_rows": found.cold}
            rows = found.size
        if distinct is not None:
            full = distinct + 2
            entry |= {"full_rows": full, "rows_saved": full - rows, "saved_fraction": round(1 - rows / full, 4)}
        return entry

    def spec(self) -> dict[str, dict[str, Any]]:
        """What ``serve.py`` needs per remapped feature: rule, rows and raw column."""
        return {
            name: {"remap": kind, "rows": self.rows[name], "source": source_column(self.data, name)}
            for name, kind in self.kinds.items()
        }


__all__ = ["REMAP_DIR", "FieldRemaps", "hash_sources", "source_column"]
