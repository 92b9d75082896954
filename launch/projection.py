"""``recscale project``: throughput and scaling efficiency beyond this machine, from the planner.

TorchRec's planner runs on a meta-device model for every target topology (no GPU needed) and gives
the slowest rank's embedding step estimate and memory; a measured per-device dense step comes from a
run directory, a GPU benchmark JSON (``benchmarks/results/mfu_gpu.json``) or the command line. This
module gathers those inputs into ``projection.json``; the arithmetic and its assumptions live in
``recscale.reports.projection`` (torch-free), which the report reads.

    recscale project quickstart --nodes 1,2,4,8,16,32,64 --run runs/quickstart-... --out projections/qs
    recscale project wukong_scale_5p6g --nodes 1,8,64 --benchmark benchmarks/results/mfu_gpu.json --model wukong_5p6g
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig, load_config
from recscale.reports.projection import project
from recscale.reports.rundata import PROJECTION, load_run, time_split

log = logging.getLogger("recscale")

GIB = 1024**3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``recscale project``."""
    p = sub.add_parser("project", help="project throughput and scaling efficiency to larger clusters (no GPU)")
    p.add_argument("config", help="preset name or path to a YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nodes", required=True, help="node counts, e.g. 1,2,4,8,16,32,64")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="what the planner plans for")
    p.add_argument("--mode", choices=["weak", "strong"], default="weak")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default="", help="measured step: a (1-rank) run directory")
    src.add_argument("--benchmark", default="", help="measured step: a benchmarks/results/mfu_gpu.json file")
    src.add_argument("--dense-step-ms", type=float, default=0.0, help="measured step, ms (with --batch-size-per-rank)")
    p.add_argument("--model", default="", help="with --benchmark: which model of the file")
    p.add_argument("--batch-size-per-rank", type=int, default=0, help="batch of the measured step / of the weak sweep")
    p.add_argument("--intra-gbps", type=float, default=0.0, help="intra-node GiB/s per rank (default: config/TorchRec)")
    p.add_argument("--inter-gbps", type=float, default=0.0, help="inter-node GiB/s per rank (default: config/TorchRec)")
    p.add_argument("--overlap", type=float, default=0.0, help="share of the all-reduce hidden behind backward")
    p.add_argument("--out", required=True, help="directory for projection.json and report.html")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Build ``projection.json``, print the table, write the report."""
    from recscale.reports.report import write_report

    cfg = load_config(args.config, args.overrides)
    nodes = parse_ints(args.nodes, "--nodes")
    if not 0.0 <= args.overlap <= 1.0:
        raise ValueError(f"--overlap: expected a fraction in [0, 1], got {args.overlap}")
    measured = measured_step(args)
    inputs = build_inputs(
        cfg,
        measured,
        nodes,
        args.ranks_per_node,
        args.device,
        args.mode,
        args.intra_gbps,
        args.inter_gbps,
        args.overlap,
    )
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PROJECTION, inputs)
    for r in project(inputs)["rows"]:
        print(
            f"{r['world_size']:>6} ranks: step {r['step_ms']:9.3f} ms (dense {r['dense_ms']:.3f}, embedding "
            f"{r['embedding_ms']:.3f}, all-reduce {r['allreduce_ms']:.3f}) | {r['examples_per_s']:,.0f} examples/s "
            f"| efficiency {100 * r['efficiency']:.1f}%"
        )
    print(f"projection: {out / PROJECTION}")
    print(f"report: {write_report([out])}")
    return 0


def parse_ints(text: str, flag: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (positive, increasing)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or values != sorted(set(values)):
        raise ValueError(f"{flag}: expected increasing positive integers, got {text!r}")
    return values


def measured_step(args: argparse.Namespace) -> dict[str, Any]:
    """The measured per-device step from a run, a benchmark file or the command line."""
    if args.run:
        run = load_run(Path(args.run))
        split = time_split(run)
        if not split:
            raise ValueError(f"--run {args.run}: no steady train records in its metrics.jsonl")
        note = "" if run.world_size == 1 else f" (measured on {run.world_size} ranks: includes their communication)"
        return {
            "source": f"run {run.path}{note}",
            "device": run.summary.get("device_name"),
            "dense_step_ms": 1e3 * (split["forward"] + split["backward"] + split["optimizer"]),
            "batch_size_per_rank": int(run.summary["batch_size_per_rank"]),
            "what": "forward + backward + optimizer phases of the run's steady steps (its own lookups included)",
        }
    if args.benchmark:
        data = json.loads(Path(args.benchmark).read_text())
        models = data.get("models", {})
        if args.model not in models:
            raise ValueError(f"--model: {args.model!r} is not in {args.benchmark}; it has {', '.join(models)}")
        m = models[args.model]
        return {
            "source": f"benchmark {args.benchmark} [{args.model}]",
            "device": m.get("device") or data.get("device"),
            "dense_step_ms": float(m["step_ms"]),
            "batch_size_per_rank": int(m["shapes"]["batch"]),
            "what": "dense arch forward + backward (bf16, plain torch; no optimizer, no lookups)",
        }
    if args.dense_step_ms <= 0 or args.batch_size_per_rank <= 0:
        raise ValueError("--dense-step-ms needs a positive value and --batch-size-per-rank")
    return {
        "source": "command line",
        "device": "given",
        "dense_step_ms": args.dense_step_ms,
        "batch_size_per_rank": args.batch_size_per_rank,
        "what": "as given",
    }


def build_inputs(
    cfg: JobConfig,
    measured: dict[str, Any],
    nodes: list[int],
    ranks_per_node: int,
    device: str,
    mode: str,
    intra_gbps: float = 0.0,
    inter_gbps: float = 0.0,
    overlap: float = 0.0,
) -> dict[str, Any]:
    """Plan every topology on a meta model and collect the projection's inputs (the JSON it writes)."""
    from torchrec.distributed.planner.constants import CROSS_NODE_BANDWIDTH, INTRA_NODE_BANDWIDTH

    from recscale.modules.build import build_model
    from recscale.sharding.planner import plan_embeddings

    built = build_model(cfg, dense_device="meta")
    topo = cfg.sharding.topology
    intra = intra_gbps or topo.intra_host_bw_gbps or INTRA_NODE_BANDWIDTH * 1000 / GIB
    inter = inter_gbps or topo.inter_host_bw_gbps or CROSS_NODE_BANDWIDTH * 1000 / GIB
    source = "command line" if (intra_gbps or inter_gbps) else "config" if topo.intra_host_bw_gbps else "TorchRec"
    cfg.sharding.topology.intra_host_bw_gbps, cfg.sharding.topology.inter_host_bw_gbps = intra, inter
    cfg.sharding.topology.ranks_per_node = ranks_per_node
    grad_elem = 2 if (cfg.trainer.precision == "bf16" and cfg.sharding.dense == "deepspeed") else 4
    dense_params = sum(p.numel() for p in built.dense.parameters())
    topologies: list[dict[str, Any]] = []
    for n_nodes in nodes:
        world = n_nodes * ranks_per_node
        if mode == "weak":
            per_rank = int(measured["batch_size_per_rank"])
        else:
            if cfg.trainer.batch_size % world:
                log.warning("strong scaling: skipping %d ranks (global batch %d)", world, cfg.trainer.batch_size)
                continue
            per_rank = cfg.trainer.batch_size // world
        _, plan = plan_embeddings(
            built.sparse,
            cfg.sharding,
            world_size=world,
            local_world_size=ranks_per_node,
            device=device,
            batch_size_per_rank=per_rank,
            sparse_optimizer=cfg.optimizer.sparse.name,
        )
        topologies.append(
            {
                "nodes": n_nodes,
                "world_size": world,
                "batch_size_per_rank": per_rank,
                "embedding_step_ms": plan.est_step_ms(),
                "data_parallel_table_bytes": sum(
                    t.rows * t.dim * 4 for t in plan.tables if t.sharding_type == "data_parallel"
                ),
                "embedding_max_rank_bytes": max(plan.bytes_per_rank()),
                "sharding_types": sorted({t.sharding_type for t in plan.tables}),
            }
        )
    return {
        "config": cfg.name,
        "arch": cfg.model.arch,
        "mode": mode,
        "measured": measured,
        "planner_device": device,
        "ranks_per_node": ranks_per_node,
        "bandwidth": {
            "intra_node_gb_per_s": intra * GIB / 1e9,
            "inter_node_gb_per_s": inter * GIB / 1e9,
            "source": source,
        },
        "dense_parameters": dense_params,
        "gradient_bytes": dense_params * grad_elem,
        "overlap": overlap,
        "topologies": topologies,
        "assumptions": [
            f"the measured step is {measured['what']}",
            f"gradient bytes all-reduced per step = {dense_params:,} dense parameters x {grad_elem} bytes + the "
            "fp32 weights of the tables the planner made data-parallel at that topology",
        ],
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
