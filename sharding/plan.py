"""Sharding plans as data: which table goes where, and how much memory each rank holds.

Saved as ``plan.json`` in the run directory and printed as a table, with the planner's estimates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchrec.distributed.types import ShardingPlan

# Bytes of optimizer state per row (rowwise) or per element, for the fused sparse optimizers.
_STATE_PER_ELEMENT = {"adagrad": 4, "adam": 8, "sgd": 0, "rowwise_adagrad": 0}
_STATE_PER_ROW = {"rowwise_adagrad": 4, "adagrad": 0, "adam": 0, "sgd": 0}


@dataclass
class ShardPlacement:
    """One shard of one table."""

    rank: int
    offsets: list[int]
    """(row, column) offset of the shard in the table."""
    sizes: list[int]
    """(rows, columns) of the shard."""
    bytes: int
    """Weights + fused optimizer state, bytes (fp32 weights)."""
    est_perf_ms: float = 0.0
    """Planner's per-step time estimate for this shard (0 for hand-built plans)."""


@dataclass
class TablePlacement:
    """Where one table lives."""

    table: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    shards: list[ShardPlacement]

    @property
    def ranks(self) -> list[int]:
        """Ranks holding a shard (every rank for data-parallel tables)."""
        return sorted({s.rank for s in self.shards})


@dataclass
class EmbeddingPlan:
    """The whole embedding plan of a job, in plain data."""

    world_size: int
    device: str
    source: str
    """``planner`` or ``manual``."""
    tables: list[TablePlacement] = field(default_factory=list)
    planner_summary: dict[str, Any] = field(default_factory=dict)

    def bytes_per_rank(self) -> list[int]:
        """Embedding memory (weights + optimizer state) per rank."""
        out = [0] * self.world_size
        for t in self.tables:
            for s in t.shards:
                out[s.rank] += s.bytes
        return out

    def est_step_ms(self) -> float:
        """Planner's estimate of the embedding part of a step: the slowest rank's total."""
        per_rank = [0.0] * self.world_size
        for t in self.tables:
            for s in t.shards:
                per_rank[s.rank] += s.est_perf_ms
        return max(per_rank) if per_rank else 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``plan.json``."""
        out = asdict(self)
        out["bytes_per_rank"] = self.bytes_per_rank()
        out["est_step_ms"] = self.est_step_ms()
        return out

    def save(self, path: Path) -> None:
        """Write ``plan.json`` (temporary name, then rename)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> EmbeddingPlan:
        """Read a ``plan.json``."""
        raw = json.loads(Path(path).read_text())
        tables = [TablePlacement(**{**t, "shards": [ShardPlacement(**s) for s in t["shards"]]}) for t in raw["tables"]]
        return cls(
            world_size=raw["world_size"],
            device=raw["device"],
            source=raw["source"],
            tables=tables,
            planner_summary=raw.get("planner_summary", {}),
        )

    def format_table(self) -> str:
        """Human-readable table: table -> sharding type -> ranks -> memory, then memory per rank."""
        header = f"{'table':<20} {'rows':>12} {'dim':>5} {'sharding':<18} {'kernel':<18} {'ranks':<16} {'memory':>10}"
        lines = [f"Embedding plan ({self.source}) for {self.world_size} x {self.device}", header]
        for t in self.tables:
            ranks = _compact_ranks(t.ranks)
            mem = sum(s.bytes for s in t.shards)
            lines.append(
                f"{t.table:<20} {t.rows:>12,} {t.dim:>5} {t.sharding_type:<18} {t.compute_kernel:<18} "
                f"{ranks:<16} {_human_bytes(mem):>10}"
            )
        lines.append("memory per rank (embedding weights + fused optimizer state):")
        per_rank = self.bytes_per_rank()
        if len(per_rank) <= 16:
            lines += [f"  rank {rank:>4}: {_human_bytes(b)}" for rank, b in enumerate(per_rank)]
        else:
            mean = sum(per_rank) / len(per_rank)
            top = sorted(range(len(per_rank)), key=lambda r: -per_rank[r])[:5]
            lines.append(
                f"  min {_human_bytes(min(per_rank))}, mean {_human_bytes(mean)}, max {_human_bytes(max(per_rank))}"
                f" (max is {100 * (max(per_rank) / mean - 1) if mean else 0:.0f}% above the mean)"
            )
            lines.append("  fullest ranks: " + ", ".join(f"{r} ({_human_bytes(per_rank[r])})" for r in top))
        if self.planner_summary:
            s = self.planner_summary
            lines.append(
                f"planner: {s.get('num_proposals', '?')} proposals, {s.get('num_plans', '?')} feasible plans; "
                f"estimated embedding step time {self.est_step_ms():.3f} ms (slowest rank)"
            )
        return "\n".join(lines)


def _compact_ranks(ranks: list[int]) -> str:
    if not ranks:
        return "-"
    if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(str(r) for r in ranks)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def describe_plan(
    plan: ShardingPlan,
    table_shapes: dict[str, tuple[int, int]],
    world_size: int,
    device: str,
    sparse_optimizer: str,
    source: str,
    estimates: dict[str, list[float]] | None = None,
    planner_summary: dict[str, Any] | None = None,
) -> EmbeddingPlan:
    """A TorchRec ``ShardingPlan`` -> ``EmbeddingPlan``.

    Args:
        plan: the plan DMP will use.
        table_shapes: table name -> (rows, dim).
        world_size: ranks.
        device: ``cpu`` or ``cuda``.
        sparse_optimizer: fused optimizer name (its state counts towards memory).
        source: ``planner`` or ``manual``.
        estimates: table -> per-shard perf estimates in ms (planner only), in shard order.
        planner_summary: counts reported by the planner.
    """
    tables = []
    per_elem = _STATE_PER_ELEMENT.get(sparse_optimizer, 0)
    per_row = _STATE_PER_ROW.get(sparse_optimizer, 0)
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():  # type: ignore[attr-defined]
            rows, dim = table_shapes[name]
            shards = []
            if ps.sharding_spec is None:  # data parallel: a full copy on every rank
                placements = [(r, [0, 0], [rows, dim]) for r in (ps.ranks or range(world_size))]
            else:
                placements = [
                    (int(md.placement.rank()), list(md.shard_offsets), list(md.shard_sizes))
                    for md in ps.sharding_spec.shards
                ]
            perf = (estimates or {}).get(name, [])
            for i, (rank, offsets, sizes) in enumerate(placements):
                n_rows, n_cols = sizes
                nbytes = n_rows * n_cols * (4 + per_elem) + n_rows * per_row
                shards.append(ShardPlacement(rank, offsets, sizes, nbytes, perf[i] if i < len(perf) else 0.0))
            tables.append(TablePlacement(name, rows, dim, ps.sharding_type, ps.compute_kernel, shards))
    return EmbeddingPlan(world_size, device, source, tables, planner_summary or {})
