"""GraphHash: user and item ids share embedding rows by community of the training user-item graph.

Implemented from the description in "GraphHash: Graph Clustering Enables Parameter Efficiency in
Recommender Systems" (arXiv 2412.17245); no code of the authors' was read or ported. The steps:

1. ``EdgeCounter`` collects the (user key, item key) pairs of the positive training rows.
2. ``biadjacency`` turns them into a sparse ``[U, I]`` matrix (weight = positive rows of the pair, or 1
   when binarised); only ids with a positive row are nodes.
3. ``louvain_partition`` maximises Barber's bipartite modularity at resolution ``gamma`` with
   scikit-network's Louvain (nodes shuffled by the seed)::

       Q_B = (1/m) sum_{u, i} (A_ui - gamma * k_u * d_i / m) * [c_u == c_i],   m = sum(A)

4. Each side's communities are numbered 0..R_graph-1 (largest first); ``CommunityMap`` sends a known key to
   its community's row and any other key (unseen, only in negative rows, or empty) to a cold block of
   R_cold hashed rows after them: ``R_graph + SplitMix64(key) % R_cold``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recscale.configs.schema import GraphHashConfig
from recscale.data.hashing import mix64

if TYPE_CHECKING:  # scipy is imported when a graph is built, not by every ``import recscale.data``
    import scipy.sparse as sp


def _sum_pairs(users: np.ndarray, items: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Equal (user, item) pairs merged, counts summed; sorted by user then item."""
    if len(users) == 0:
        return users, items, counts
    order = np.lexsort((items, users))
    users, items, counts = users[order], items[order], counts[order]
    starts = np.flatnonzero(np.r_[True, (users[1:] != users[:-1]) | (items[1:] != items[:-1])])
    return users[starts], items[starts], np.add.reduceat(counts, starts)


class EdgeCounter:
    """Positive (user key, item key) pairs of the training rows and how often each occurs.

    Memory is O(distinct pairs): blocks are merged whenever the pending pairs outgrow the merged ones.
    """

    def __init__(self) -> None:
        self.users = np.empty(0, dtype=np.uint64)
        self.items = np.empty(0, dtype=np.uint64)
        self.counts = np.empty(0, dtype=np.int64)
        self.positive_rows = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        """Count the pairs ``(users[k], items[k])`` (uint64 keys ``[n]`` each, positive rows only)."""
        self.positive_rows += len(users)
        merged = _sum_pairs(users.astype(np.uint64), items.astype(np.uint64), np.ones(len(users), dtype=np.int64))
        self._pending.append(merged)
        self._pending_size += len(merged[0])
        if self._pending_size > max(len(self.users), 1 << 20):
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            parts = [(self.users, self.items, self.counts), *self._pending]
            self.users, self.items, self.counts = _sum_pairs(*(np.concatenate(p) for p in zip(*parts)))
            self._pending, self._pending_size = [], 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user keys [E], item keys [E], counts [E])`` of the distinct pairs, sorted."""
        self._flush()
        return self.users, self.items, self.counts

    def fingerprint(self) -> str:
        """A short hash of the pairs and counts: which training graph a mapping was built from."""
        digest = hashlib.sha256()
        for array in self.pairs():
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


def biadjacency(
    users: np.ndarray, items: np.ndarray, counts: np.ndarray, binarize: bool
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(A [U, I] float64 CSR, user keys [U], item keys [I])`` of the pairs; keys sorted, row/column order."""
    import scipy.sparse as sp

    user_keys, u = np.unique(users, return_inverse=True)
    item_keys, i = np.unique(items, return_inverse=True)
    weights = np.ones(len(counts)) if binarize else counts.astype(np.float64)
    matrix = sp.csr_matrix((weights, (u, i)), shape=(len(user_keys), len(item_keys)))
    return matrix, user_keys, item_keys


def louvain_partition(matrix: sp.csr_matrix, resolution: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Community labels ``([U], [I])`` of a biadjacency matrix; both sides share one label space."""
    from sknetwork.clustering import Louvain

    louvain = Louvain(resolution=resolution, shuffle_nodes=True, random_state=seed)
    louvain.fit(matrix, force_bipartite=True)
    return np.asarray(louvain.labels_row_, dtype=np.int64), np.asarray(louvain.labels_col_, dtype=np.int64)


def bipartite_modularity(
    matrix: sp.csr_matrix, user_labels: np.ndarray, item_labels: np.ndarray, resolution: float = 1.0
) -> float:
    """Barber's modularity Q_B of a partition (the module docstring's formula)."""
    coo = matrix.tocoo()
    m = float(coo.data.sum())
    if m == 0:
        return 0.0
    inside = float(coo.data[user_labels[coo.row] == item_labels[coo.col]].sum())
    labels = max(int(user_labels.max(initial=-1)), int(item_labels.max(initial=-1))) + 1
    k = np.bincount(user_labels, weights=np.asarray(matrix.sum(axis=1)).ravel(), minlength=labels)
    d = np.bincount(item_labels, weights=np.asarray(matrix.sum(axis=0)).ravel(), minlength=labels)
    return inside / m - resolution * float(k @ d) / m**2


def cold_rows(communities: int, fraction: float, minimum: int) -> int:
    """Rows of the cold block: max(``minimum``, ceil(``fraction`` x ``communities``))."""
    return max(minimum, math.ceil(fraction * communities))


@dataclass
class CommunityMap:
    """One field's key -> row lookup: community rows first, then the hashed cold block."""

    keys: np.ndarray
    """Sorted uint64 keys of the values with a positive training row ``[K]``."""
    rows: np.ndarray
    """Community row of each key, int64 in [0, communities) ``[K]``."""
    communities: int
    """R_graph: the field's communities."""
    cold: int
    """R_cold: rows of the cold block."""

    @property
    def size(self) -> int:
        """Rows the field's table needs: R_graph + R_cold."""
        return self.communities + self.cold

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (uint64 ``[n]``) as int64 ``[n]``, every one in [0, ``size``)."""
        keys = keys.astype(np.uint64)
        cold = self.communities + (mix64(keys) % np.uint64(self.cold)).astype(np.int64)
        if len(self.keys) == 0:
            return cold
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.rows[at], cold)

    def save(self, path: Path) -> None:
        """Write to ``path`` (``.npz``) through a temporary name."""
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, keys=self.keys, rows=self.rows, meta=np.array([self.communities, self.cold]))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> CommunityMap:
        """Read a map written by ``save``."""
        with np.load(path) as data:
            communities, cold = (int(v) for v in data["meta"])
            return CommunityMap(data["keys"], data["rows"], communities, cold)


def _side_map(keys: np.ndarray, labels: np.ndarray, config: GraphHashConfig) -> CommunityMap:
    """Number one side's communities 0..R-1 (in label order: largest community first) and add the cold block."""
    used, rows = np.unique(labels, return_inverse=True)
    cold = cold_rows(len(used), config.cold_fraction, config.min_cold_rows)
    return CommunityMap(keys, rows.astype(np.int64), len(used), cold)


def build_maps(edges: EdgeCounter, config: GraphHashConfig) -> tuple[CommunityMap, CommunityMap, dict[str, Any]]:
    """Cluster the positive-row graph: ``(user map, item map, what was done)``."""
    started = time.perf_counter()
    users, items, counts = edges.pairs()
    matrix, user_keys, item_keys = biadjacency(users, items, counts, config.binarize)
    if matrix.nnz:
        user_labels, item_labels = louvain_partition(matrix, config.resolution, config.seed)
    else:
        user_labels, item_labels = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    user_map = _side_map(user_keys, user_labels, config)
    item_map = _side_map(item_keys, item_labels, config)
    info = {
        "resolution": config.resolution,
        "seed": config.seed,
        "binarize": config.binarize,
        "positive_rows": edges.positive_rows,
        "edges": int(matrix.nnz),
        "users": len(user_keys),
        "items": len(item_keys),
        "communities": len(np.unique(np.r_[user_labels, item_labels])),
        "modularity": bipartite_modularity(matrix, user_labels, item_labels, config.resolution),
        "fingerprint": edges.fingerprint(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return user_map, item_map, info


__all__ = [
    "CommunityMap",
    "EdgeCounter",
    "biadjacency",
    "bipartite_modularity",
    "build_maps",
    "cold_rows",
    "louvain_partition",
]
