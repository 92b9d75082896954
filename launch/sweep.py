"""``recscale sweep``: the same preset at several world sizes, for weak or strong scaling efficiency.

    recscale sweep quickstart --world-sizes 1,2 --steps 40                  # weak: per-rank batch fixed
    recscale sweep quickstart --world-sizes 1,2,4 --mode strong --steps 40  # strong: global batch fixed

Each world size trains once, one after the other, into ``<sweep>/runs/ws<N>``; ``<sweep>/sweep.json``
lists the run directories (rewritten after each run, so an interrupted sweep still reports what
finished), then the scaling efficiency per world size (``efficiency``, also printed), and the sweep
ends by writing ``<sweep>/report.html``. Runs are measurement runs:
``trainer.max_steps`` fixed, no periodic evaluation, no checkpoints (these win over ``--set``).

The scheduler is pluggable (``Scheduler``): ``local`` trains on this machine with torchrun (what
``recscale train`` does); ``local_cwd`` and ``slurm`` submit one node of N ranks through TorchX with
``recscale launch`` (``launch/launch_cli.py``) and wait for each job before the next.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from recscale.configs import JobConfig, dump_config, load_config
from recscale.launch.local import run_local
from recscale.launch.projection import build_inputs, measured_step, parse_ints, write_json_atomic
from recscale.reports.rundata import PROJECTION, SWEEP
from recscale.trainer.job import check_job
from recscale.trainer.run_dir import CONFIG, SUMMARY

log = logging.getLogger("recscale")


class Scheduler(Protocol):
    """Trains one config into a run directory on ``nproc`` ranks of one node."""

    name: str

    def run(self, cfg: JobConfig, run_dir: Path, nproc: int) -> int:
        """Train; returns the exit code (0 = success, ``run_dir/summary.json`` written)."""


class LocalScheduler:
    """This machine, torchrun (``launch/local.py``): the path ``recscale train`` takes."""

    name = "local"

    def run(self, cfg: JobConfig, run_dir: Path, nproc: int) -> int:
        """Check the job, prepare its data, write ``config.yaml`` and train on ``nproc`` local ranks."""
        from recscale.data.prepare import prepare_data
        from recscale.sharding.topology import resolve_device

        check_job(cfg, nproc, resolve_device(cfg.trainer.device))
        prepare_data(cfg.data, cfg.embeddings)
        run_dir.mkdir(parents=True, exist_ok=False)
        dump_config(cfg, run_dir / CONFIG)
        return run_local(run_dir, nproc, max_restarts=cfg.launch.max_restarts)


class TorchXScheduler:
    """A TorchX scheduler (``local_cwd``, ``slurm``) through ``recscale launch`` (``launch/launch_cli.py``).

    The config goes to ``launch`` as a YAML file next to the run directory (removed afterwards) with
    ``-j 1x<nproc>`` and ``--wait``, so the sweep sees each job end before it starts the next.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, cfg: JobConfig, run_dir: Path, nproc: int) -> int:
        """Submit through TorchX and wait; ``launch`` does its own checks and writes the run directory."""
        from recscale.launch import launch_cli

        run_dir.parent.mkdir(parents=True, exist_ok=True)
        config = run_dir.with_name(f"{run_dir.name}.config.yaml")
        dump_config(cfg, config)
        args = argparse.Namespace(
            config=str(config),
            overrides=[],
            scheduler=self.name,
            job=f"1x{nproc}",
            max_restarts=cfg.launch.max_restarts,
            run_dir=str(run_dir.resolve()),
            dry_run=False,
            wait=True,
            verbose=False,
        )
        try:
            return int(launch_cli.launch(args))
        finally:
            config.unlink(missing_ok=True)


def get_scheduler(name: str) -> Scheduler:
    """The scheduler called ``name``.

    Raises:
        ValueError: an unknown name, or a TorchX scheduler when the TorchX launcher is not installed.
    """
    if name == "local":
        return LocalScheduler()
    if name in ("local_cwd", "slurm"):
        try:
            from recscale.launch import launch_cli
        except ImportError as err:
            raise ValueError(f"--scheduler {name}: the TorchX launcher cannot be imported ({err})") from None
        if not hasattr(launch_cli, "launch"):
            raise ValueError(f"--scheduler {name}: this installation has no TorchX launcher; use --scheduler local")
        return TorchXScheduler(name)
    raise ValueError(f"--scheduler: expected local, local_cwd or slurm, got {name!r}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``recscale sweep``."""
    p = sub.add_parser("sweep", help="train one preset at several world sizes; scaling-efficiency report")
    p.add_argument("config", help="preset name or path to a YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--world-sizes", required=True, help="ranks per run, e.g. 1,2,4")
    p.add_argument("--mode", choices=["weak", "strong"], default="weak", help="weak: fixed per-rank batch")
    p.add_argument("--per-rank-batch", type=int, default=0, help="weak: default trainer.batch_size / first size")
    p.add_argument("--steps", type=int, default=40, help="trainer.max_steps of every run")
    p.add_argument("--scheduler", default="local", help="local (torchrun here), local_cwd or slurm (TorchX)")
    p.add_argument("--out", default="", help="sweep directory (default: <run_root>/sweep-<name>-<time>)")
    p.add_argument("--project-nodes", default="", help="also project to these node counts (e.g. 1,2,4,8,16,32,64)")
    p.add_argument("--ranks-per-node", type=int, default=8, help="with --project-nodes")
    p.add_argument("--planner-device", choices=["cpu", "cuda"], default="", help="with --project-nodes")
    p.set_defaults(func=run_command)


def sweep_configs(base: JobConfig, world_sizes: list[int], mode: str, per_rank: int, steps: int) -> list[JobConfig]:
    """One config per world size: weak keeps the per-rank batch, strong the global batch.

    Raises:
        ValueError: a global batch that a world size does not divide, or a bad count.
    """
    if steps < 1:
        raise ValueError(f"--steps: expected a positive number of steps, got {steps}")
    out = []
    for n in world_sizes:
        cfg = load_config_copy(base)
        if mode == "weak":
            cfg.trainer.batch_size = per_rank * n
        elif base.trainer.batch_size % n:
            raise ValueError(
                f"--world-sizes: strong scaling keeps trainer.batch_size={base.trainer.batch_size}, "
                f"which {n} ranks do not divide"
            )
        cfg.trainer.max_steps = steps
        cfg.trainer.eval_every = 0
        cfg.checkpoint.every_steps = 0
        cfg.checkpoint.at_end = False
        cfg.launch.nproc_per_node = n
        out.append(cfg)
    return out


def load_config_copy(cfg: JobConfig) -> JobConfig:
    """A deep copy of a config."""
    import copy

    return copy.deepcopy(cfg)


def run_command(args: argparse.Namespace) -> int:
    """Train every world size, write ``sweep.json`` (and ``projection.json``), then the report."""
    from recscale.reports.report import write_report

    base = load_config(args.config, args.overrides)
    sizes = parse_ints(args.world_sizes, "--world-sizes")
    per_rank = args.per_rank_batch or base.trainer.batch_size // sizes[0]
    if per_rank < 1:
        raise ValueError(f"--per-rank-batch: expected a positive batch, got {per_rank}")
    configs = sweep_configs(base, sizes, args.mode, per_rank, args.steps)
    scheduler = get_scheduler(args.scheduler)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (
        Path(args.out).expanduser()
        if args.out
        else Path(base.launch.run_root).expanduser() / f"sweep-{base.name}-{stamp}"
    )
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "kind": "sweep",
        "config": args.config,
        "overrides": args.overrides,
        "mode": args.mode,
        "world_sizes": sizes,
        "batch_size_per_rank": per_rank if args.mode == "weak" else None,
        "global_batch": base.trainer.batch_size if args.mode == "strong" else None,
        "steps": args.steps,
        "scheduler": scheduler.name,
        "note": "they share this machine's cores; set OMP_NUM_THREADS so each rank gets the same threads at "
        "every world size",
    }
    runs: list[dict[str, Any]] = []
    for n, cfg in zip(sizes, configs):
        run_dir = out / "runs" / f"ws{n}"
        log.info("sweep: %d ranks -> %s", n, run_dir)
        code = scheduler.run(cfg, run_dir, n)
        ok = code == 0 and (run_dir / SUMMARY).is_file()
        runs.append({"world_size": n, "run_dir": str(run_dir.relative_to(out)), "ok": ok, "exit_code": code})
        failed = [r for r in runs if not r["ok"]]
        write_json_atomic(out / SWEEP, {**index, "runs": [r for r in runs if r["ok"]], "failed": failed})
        if not ok:
            log.error("sweep: the %d-rank run failed (exit code %d); logs in %s", n, code, run_dir / "logs")
    if args.project_nodes:
        first = next((r for r in runs if r["ok"]), None)
        if first is not None:
            ns = argparse.Namespace(run=str(out / first["run_dir"]), benchmark="", dense_step_ms=0.0)
            device = args.planner_device or configs[0].sharding.topology.device
            device = "cuda" if device == "auto" else device
            inputs = build_inputs(
                base,
                measured_step(ns),
                parse_ints(args.project_nodes, "--project-nodes"),
                args.ranks_per_node,
                device,
                args.mode,
            )
            write_json_atomic(out / PROJECTION, inputs)
    done, failed = [r for r in runs if r["ok"]], [r for r in runs if not r["ok"]]
    efficiency = scaling_efficiency(out, done, args.mode)
    write_json_atomic(out / SWEEP, {**index, "runs": done, "failed": failed, **efficiency})
    for row in efficiency["efficiency"]:
        print(
            f"{row['world_size']} ranks: {row['examples_per_s']:,.0f} examples/s "
            f"({row['examples_per_s_per_rank']:,.0f} per rank), {args.mode} scaling efficiency "
            f"{100 * row['efficiency']:.1f}%"
        )
    print(f"sweep directory: {out}")
    print(f"report: {write_report([out])}")
    return 0 if all(r["ok"] for r in runs) else 1


def scaling_efficiency(out: Path, runs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """``{"efficiency": rows}``: throughput, speed-up and efficiency per world size (``reports.scaling``)."""
    from recscale.reports.rundata import load_run
    from recscale.reports.scaling import efficiency_table

    table = efficiency_table([load_run(out / r["run_dir"]) for r in runs], mode)
    keys = ("world_size", "examples_per_s", "examples_per_s_per_rank", "speedup", "efficiency", "mfu")
    return {"efficiency": [{k: row[k] for k in keys} for row in table]}
