"""Projected throughput and scaling efficiency for topologies larger than this machine (no torch).

``recscale project`` (``launch/projection.py``) runs TorchRec's planner on a meta model at every target
topology and writes ``projection.json``: the planner's embedding step estimate per topology, a measured
per-device dense step, the dense gradient size and the link bandwidths. This module turns those
inputs into step times, throughput and efficiency with a deliberately simple model, and lists every
assumption it makes so the report can print them:

    step(N) = dense(b) + embedding(N, b) + (1 - overlap) * allreduce(N)
    dense(b) = measured dense step x b / b_measured           (linear in the per-rank batch b)
    embedding(N, b) = planner's estimate for the slowest rank (lookups + all-to-all, fwd + bwd)
    allreduce(N) = 2 (N - 1) / N x gradient bytes / bandwidth  (ring; inter-node bandwidth once N
                                                                 spans nodes, else intra-node; gradient
                                                                 bytes = dense + data-parallel tables)
    throughput(N) = N x b / step(N);   efficiency(N) = (throughput(N) / N) / (throughput(N0) / N0)
"""

from __future__ import annotations

from typing import Any

BASE_ASSUMPTIONS = [
    "dense compute time grows linearly with the per-rank batch and does not change with the world size "
    "(the measured per-device step is reused at every topology)",
    "embedding time per step is TorchRec's planner estimate for the slowest rank (its perf model: lookups, "
    "input/output all-to-all, forward and backward) at that topology and per-rank batch",
    "dense gradients are all-reduced once per step by a ring: each rank sends and receives "
    "2 (N-1)/N x gradient bytes, at the intra-node bandwidth within one node and the inter-node bandwidth "
    "per rank across nodes; latency terms are ignored",
    "phases do not overlap unless an overlap fraction is given (it hides that share of the all-reduce "
    "behind backward); data loading is assumed hidden by the loader",
    "no stragglers, no failures, identical devices; MoE all-to-all (if any) is not modelled",
]


def project(inputs: dict[str, Any]) -> dict[str, Any]:
    """Step time, throughput and efficiency per topology from ``projection.json``'s inputs.

    Args:
        inputs: ``{"measured": {"dense_step_ms", "batch_size_per_rank", ...}, "gradient_bytes" (dense),
            "bandwidth": {"intra_node_gb_per_s", "inter_node_gb_per_s"}, "ranks_per_node", "overlap",
            "topologies": [{"nodes", "world_size", "batch_size_per_rank", "embedding_step_ms",
            "data_parallel_table_bytes"}, ...]}``.

    Returns:
        ``{"rows": [...], "assumptions": [...]}``; efficiency is relative to the first topology.

    Raises:
        ValueError: a missing or non-positive input.
    """
    measured = inputs["measured"]
    dense_ms, b_measured = float(measured["dense_step_ms"]), int(measured["batch_size_per_rank"])
    if dense_ms <= 0 or b_measured <= 0:
        raise ValueError("projection: the measured dense step and its batch must be positive")
    bw = inputs["bandwidth"]
    intra, inter = float(bw["intra_node_gb_per_s"]), float(bw["inter_node_gb_per_s"])
    if intra <= 0 or inter <= 0:
        raise ValueError("projection: bandwidths must be positive")
    grad_bytes = float(inputs["gradient_bytes"])
    overlap = float(inputs.get("overlap", 0.0))
    per_node = int(inputs["ranks_per_node"])
    rows = []
    for topo in inputs["topologies"]:
        n, b = int(topo["world_size"]), int(topo["batch_size_per_rank"])
        dense = dense_ms * b / b_measured
        link = inter if n > per_node else intra
        nbytes = grad_bytes + float(topo.get("data_parallel_table_bytes", 0))
        allreduce = 2 * (n - 1) / n * nbytes / (link * 1e9) * 1e3 if n > 1 else 0.0
        emb = float(topo["embedding_step_ms"])
        step = dense + emb + (1 - overlap) * allreduce
        rows.append(
            {
                "nodes": topo.get("nodes"),
                "world_size": n,
                "batch_size_per_rank": b,
                "global_batch": n * b,
                "dense_ms": dense,
                "embedding_ms": emb,
                "allreduce_ms": allreduce,
                "step_ms": step,
                "examples_per_s": n * b / step * 1e3,
                "examples_per_s_per_rank": b / step * 1e3,
                "embedding_max_rank_bytes": topo.get("embedding_max_rank_bytes"),
                "allreduce_bytes": nbytes,
            }
        )
    if rows:
        base = rows[0]
        for r in rows:
            r["efficiency"] = r["examples_per_s_per_rank"] / base["examples_per_s_per_rank"]
            r["speedup"] = r["examples_per_s"] / base["examples_per_s"]
    assumptions = list(BASE_ASSUMPTIONS) + list(inputs.get("assumptions", []))
    assumptions.append(f"overlap fraction of the all-reduce: {overlap:g}")
    return {"rows": rows, "assumptions": assumptions}
