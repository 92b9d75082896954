"""Lattice's Partitioner: which domains should share one model, read from their training data.

A production ads stack has many surfaces (domains) and must decide which of them one model serves. Merging
helps when the domains see the same users and items (one domain's traffic trains embeddings the other
uses) and when their labels behave alike (dense fresh clicks next to sparse delayed conversions pull one
trunk apart). Over the rows of the training split, per domain ``d`` of ``data.features.domain``:

- ids: per id feature f, the set ``S_f(d)`` of ids seen and each id's row count;
- labels: per ``bce`` task, the rows the task applies to (``domains``, ``given``) and their positive rate;
- delay: the median of a delay column (seconds from impression to conversion; rows without one ignored).

Per pair (i, j):

- ``jaccard[f][i, j] = |S_f(i) ∩ S_f(j)| / |S_f(i) ∪ S_f(j)|``;
- ``shared_traffic[f][i, j]``: the mean over both directions of the share of a domain's rows whose id the
  other domain has seen. Unlike Jaccard it does not fall when one domain is much smaller: a small domain
  drawn from the same users as a big one sees mostly the big one's frequent ids;
- ``label_similarity[i, j]``: the mean over tasks of ``min(r_i, r_j) / max(r_i, r_j)`` of the positive
  rates (0 for a task that applies to one domain only), and of the median delays when there is a delay;
- ``gradient_cosine[i, j]`` (with a pilot run, ``trainer/pilot_gradients.py``): the cosine of the two
  domains' gradients on the dense trunk after a short pilot run;
- ``affinity[i, j] = mean_f shared_traffic[f][i, j] × label_similarity[i, j] (× max(0, gradient_cosine))``:
  a product, because any criterion alone can veto a merge. Domains with no ids in common gain nothing from
  one model, and domains with shared ids but unlike labels or opposed gradients are the conflicting ones.

``groups`` joins domains by average linkage: while the two closest groups' mean pairwise affinity is at
least ``min_affinity``, they merge. The paper also names a revenue-weighted compute budget, which only
the user can weigh.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recscale.configs.schema import TaskConfig


@dataclass
class DomainStats:
    """What one domain's rows hold (accumulated over record batches)."""

    rows: int = 0
    id_counts: dict[str, dict[int, int]] = field(default_factory=dict)
    """Feature -> id -> rows with that id."""
    applies: dict[str, int] = field(default_factory=dict)
    """Task -> rows the task applies to."""
    positives: dict[str, int] = field(default_factory=dict)
    delays: list[np.ndarray] = field(default_factory=list)


def _scan(path: Path, columns: list[str], max_rows: int, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` from the Parquet files under ``path``, at most ``max_rows`` rows (0 = all)."""
    dataset = ds.dataset(str(path), format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: {dataset.schema.names})")
    seen = 0
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        if max_rows and seen + batch.num_rows > max_rows:
            batch = batch.slice(0, max_rows - seen)
        seen += batch.num_rows
        yield batch
        if max_rows and seen >= max_rows:
            return


def domain_count(path: Path, domain_column: str) -> int:
    """One more than the largest value of ``domain_column`` under ``path`` (the domains a split holds)."""
    dataset = ds.dataset(str(path), format="parquet")
    if domain_column not in dataset.schema.names:
        raise ValueError(f"{path}: no column {domain_column!r} (columns: {dataset.schema.names})")
    largest = pc.max(dataset.to_table(columns=[domain_column])[domain_column]).as_py()
    return 0 if largest is None else int(largest) + 1


def _ids_by_row(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, row)``: every id of a single- or multi-valued column with the row it belongs to (nulls dropped)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        rows = pc.list_parent_indices(column).to_numpy()
        values = pc.list_flatten(column)
    else:
        rows, values = np.arange(len(column)), column
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=False)[valid].astype(np.int64), rows[valid]


def collect(
    path: Path,
    domain_column: str,
    num_domains: int,
    id_features: Sequence[str],
    tasks: Sequence[TaskConfig],
    delay_column: str = "",
    max_rows: int = 0,
) -> list[DomainStats]:
    """Per-domain counts over ``path`` (module docstring); a domain value outside ``[0, num_domains)`` is refused."""
    by_name = {t.name: t for t in tasks}
    labels = sorted({t.label for t in tasks} | {by_name[t.given].label for t in tasks if t.given})
    columns = [domain_column, *id_features, *labels, *([delay_column] if delay_column else [])]
    stats = [DomainStats(id_counts={f: {} for f in id_features}) for _ in range(num_domains)]
    for batch in _scan(path, list(dict.fromkeys(columns)), max_rows):
        domain = batch.column(domain_column).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (domain < 0) | (domain >= num_domains)
        if bad.any():
            raise ValueError(
                f"{path}: column {domain_column!r} holds domain {int(domain[bad][0])}, expected 0..{num_domains - 1}"
            )
        label = {c: batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in labels}
        ids = {f: _ids_by_row(batch.column(f)) for f in id_features}
        delay = batch.column(delay_column).to_numpy(zero_copy_only=False).astype(np.float64) if delay_column else None
        for d in range(num_domains):
            mine = domain == d
            s = stats[d]
            s.rows += int(mine.sum())
            for f, (values, row) in ids.items():
                uniq, count = np.unique(values[mine[row]], return_counts=True)
                table = s.id_counts[f]
                for i, c in zip(uniq.tolist(), count.tolist(), strict=True):
                    table[i] = table.get(i, 0) + c
            for t in tasks:
                if t.loss != "bce" or (t.domains and d not in t.domains):
                    continue
                rows = mine & (label[by_name[t.given].label] == 1) if t.given else mine
                s.applies[t.name] = s.applies.get(t.name, 0) + int(rows.sum())
                s.positives[t.name] = s.positives.get(t.name, 0) + int((label[t.label][rows] == 1).sum())
            if delay is not None:
                s.delays.append(delay[mine & np.isfinite(delay)])
    return stats


def _ratio(a: float, b: float) -> float:
    """``min / max`` of two non-negative numbers (1 when both are 0)."""
    return 1.0 if max(a, b) == 0 else min(a, b) / max(a, b)


def _pairwise(n: int, value: Any) -> list[list[float]]:
    return [[1.0 if i == j else float(value(i, j)) for j in range(n)] for i in range(n)]


def report(
    stats: Sequence[DomainStats],
    names: Sequence[str],
    tasks: Sequence[TaskConfig],
    min_affinity: float,
    gradient_cosine: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The matrices, per-domain profiles and groups of the module docstring, as plain JSON-able data."""
    n = len(stats)
    empty = [names[d] for d in range(n) if stats[d].rows == 0]
    if empty:
        raise ValueError(f"domains {', '.join(empty)}: no rows in the data read (expected every domain to appear)")
    features = list(stats[0].id_counts)

    def jaccard(f: str, i: int, j: int) -> float:
        a, b = stats[i].id_counts[f].keys(), stats[j].id_counts[f].keys()
        return len(a & b) / max(1, len(a | b))

    def shared(f: str, i: int, j: int) -> float:
        def seen_share(x: int, y: int) -> float:
            counts, other = stats[x].id_counts[f], stats[y].id_counts[f]
            total = sum(counts.values())
            return sum(c for k, c in counts.items() if k in other) / max(1, total)

        return 0.5 * (seen_share(i, j) + seen_share(j, i))

    rates = {
        t.name: [
            stats[d].positives[t.name] / stats[d].applies[t.name] if stats[d].applies.get(t.name) else None
            for d in range(n)
        ]
        for t in tasks
        if t.loss == "bce"
    }
    delays = [
        float(np.median(np.concatenate(s.delays))) if s.delays and sum(map(len, s.delays)) else None for s in stats
    ]
    has_delay = any(x is not None for x in delays)

    def label_similarity(i: int, j: int) -> float:
        parts = [0.0 if (r[i] is None) != (r[j] is None) else _ratio(r[i] or 0.0, r[j] or 0.0) for r in rates.values()]
        if has_delay:
            parts.append(
                0.0 if (delays[i] is None) != (delays[j] is None) else _ratio(delays[i] or 0.0, delays[j] or 0.0)
            )
        return sum(parts) / len(parts) if parts else 1.0

    shared_traffic = {f: _pairwise(n, lambda i, j, f=f: shared(f, i, j)) for f in features}
    labels = _pairwise(n, label_similarity)
    affinity = [[_mean([shared_traffic[f][i][j] for f in features]) * labels[i][j] for j in range(n)] for i in range(n)]
    if gradient_cosine is not None:
        affinity = [
            [a * max(0.0, g) for a, g in zip(row, cos, strict=True)]
            for row, cos in zip(affinity, gradient_cosine, strict=True)
        ]
    groups = average_linkage(affinity, min_affinity)
    return {
        "domains": list(names),
        "rows": [s.rows for s in stats],
        "id_features": features,
        "distinct_ids": {f: [len(s.id_counts[f]) for s in stats] for f in features},
        "jaccard": {f: _pairwise(n, lambda i, j, f=f: jaccard(f, i, j)) for f in features},
        "shared_traffic": shared_traffic,
        "positive_rate": rates,
        "median_delay_s": delays if has_delay else None,
        "label_similarity": labels,
        "gradient_cosine": None if gradient_cosine is None else [list(map(float, row)) for row in gradient_cosine],
        "affinity": affinity,
        "min_affinity": min_affinity,
        "groups": [[names[d] for d in g] for g in groups],
        "group_ids": groups,
    }


def _mean(values: Sequence[float]) -> float:
    """The mean (1 for no values: nothing speaks against a merge)."""
    return sum(values) / len(values) if values else 1.0


def average_linkage(affinity: Sequence[Sequence[float]], min_affinity: float) -> list[list[int]]:
    """Groups of indices: merge the two groups of highest mean pairwise affinity while it is >= ``min_affinity``.

    Ties go to the pair of lowest indices; the groups come out sorted by their first member.
    """
    groups = [[i] for i in range(len(affinity))]
    while len(groups) > 1:
        best, pair = -math.inf, (0, 0)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                mean = _mean([affinity[i][j] for i in groups[a] for j in groups[b]])
                if mean > best:
                    best, pair = mean, (a, b)
        if best < min_affinity:
            break
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    return sorted(groups)
