"""What ``recscale launch`` does before it submits: every check, cheapest first, and the TorchX job.

``prepare_launch`` runs the checks (scheduler, ``-j``, the config, what the scheduler can give, data
paths, the run root) without creating anything; ``build_app`` makes the TorchX AppDef of the job and
``format_dryrun`` shows what a dry run would submit.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig, load_config
from recscale.launch import schedulers

log = logging.getLogger("recscale")


def _device(cfg: JobConfig, scheduler: str) -> str:
    """The device the ranks will train on, as far as the submitting machine can tell."""
    if cfg.trainer.device != "auto":
        return cfg.trainer.device
    if scheduler == "slurm":
        return "cuda" if cfg.launch.gpus_per_node else "cpu"
    from recscale.sharding.topology import resolve_device

    return resolve_device("auto")


def _check_data_paths(cfg: JobConfig) -> None:
    """Real data must exist before anything is submitted (synthetic data is generated here)."""
    if cfg.data.source == "synthetic":
        return
    for key in ("train_path", "valid_path", "test_path"):
        if key == "test_path" and not cfg.data.test_path:
            continue
        path = Path(getattr(cfg.data, key)).expanduser()
        if not path.exists():
            raise ValueError(f"data.{key}: {path} does not exist")


def _absolute_paths(cfg: JobConfig) -> None:
    """Make the config's paths absolute: ranks run in another directory (Slurm: the job's log folder)."""
    for key in ("train_path", "valid_path", "test_path", "cache_dir"):
        value = getattr(cfg.data, key)
        if value:
            setattr(cfg.data, key, str(Path(value).expanduser().resolve()))
    cfg.launch.run_root = str(Path(cfg.launch.run_root).expanduser().resolve())


def _check_writable(root: Path) -> None:
    """The run root (or its nearest existing parent) must be writable."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"launch.run_root: {root} is not writable")


def _planned_run_dir(cfg: JobConfig, explicit: str) -> Path:
    """Where the run will write (absolute: nodes and the state directory see the same path)."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"--run-dir {path} is not empty")
        _check_writable(path)
        return path
    root = Path(cfg.launch.run_root).expanduser().resolve()
    _check_writable(root)
    return root / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_launch(args: argparse.Namespace) -> tuple[JobConfig, str, Path, dict[str, Any]]:
    """Every check of ``launch``, in the order of their cost; returns config, scheduler, run dir, TorchX cfg."""
    scheduler = schedulers.check_scheduler(args.scheduler) if args.scheduler else ""
    shape = schedulers.parse_job_spec(args.job) if args.job else None
    if args.max_restarts is not None and args.max_restarts < 0:
        raise ValueError(f"--max-restarts {args.max_restarts}: expected >= 0")
    cfg = load_config(args.config, args.overrides)
    scheduler = scheduler or cfg.launch.scheduler
    if shape is not None:
        cfg.launch.nnodes, cfg.launch.nproc_per_node = shape
    if args.max_restarts is not None:
        cfg.launch.max_restarts = args.max_restarts
    launch_cfg = cfg.launch
    schedulers.job_name(launch_cfg, cfg.name)
    _absolute_paths(cfg)
    device = _device(cfg, scheduler)
    from recscale.trainer.job import check_job

    check_job(cfg, launch_cfg.nnodes * launch_cfg.nproc_per_node, device)
    run_dir = _planned_run_dir(cfg, args.run_dir)
    torchx_cfg = schedulers.scheduler_cfg(scheduler, launch_cfg, run_dir)
    if scheduler == "slurm":
        try:
            nodes = schedulers.slurm_nodes()
        except ValueError as err:
            if not getattr(args, "dry_run", False):
                raise
            log.warning("dry run without a reachable cluster: the job was not checked against it (%s)", err)
        else:
            torchx_cfg["partition"] = schedulers.check_slurm_capacity(
                nodes,
                str(torchx_cfg.get("partition") or ""),
                launch_cfg.nnodes,
                launch_cfg.cpus_per_node or launch_cfg.nproc_per_node,
                launch_cfg.gpus_per_node,
                launch_cfg.mem_mb_per_node,
            )
    else:
        schedulers.check_local_capacity(
            launch_cfg.nnodes, launch_cfg.nproc_per_node, launch_cfg.gpus_per_node, device == "cuda"
        )
    _check_data_paths(cfg)
    return cfg, scheduler, run_dir, torchx_cfg


def build_app(cfg: JobConfig, run_dir: Path) -> Any:
    """The TorchX AppDef of this job (our component, its arguments from the config's launch section)."""
    from recscale.launch.components import trainer

    launch_cfg = cfg.launch
    port = launch_cfg.rdzv_port or (schedulers.free_port() if launch_cfg.nnodes > 1 else 29500)
    return trainer(
        run_dir=str(run_dir),
        nnodes=launch_cfg.nnodes,
        nproc_per_node=launch_cfg.nproc_per_node,
        cpu=launch_cfg.cpus_per_node or launch_cfg.nproc_per_node,
        gpu=launch_cfg.gpus_per_node,
        memMB=launch_cfg.mem_mb_per_node,
        max_restarts=launch_cfg.max_restarts,
        rdzv_port=port,
        name=schedulers.job_name(launch_cfg, cfg.name),
    )


def format_dryrun(info: Any, scheduler: str) -> str:
    """What would be submitted: the sbatch command and script, or each node's command line."""
    if scheduler == "slurm":
        job_dir = info.request.job_dir
        return f"{info}\n# submitted as: sbatch --parsable --chdir={job_dir} {job_dir}/torchx-sbatch.sh"
    lines = []
    for role, replicas in info.request.role_params.items():
        for k, replica in enumerate(replicas):
            env = {key: v for key, v in replica.env.items() if key != "PATH"}
            lines.append(f"# {role} node {k} (cwd {replica.cwd}; stdout/stderr {Path(replica.stdout).parent})")
            lines.append(shlex.join(["env", *(f"{key}={v}" for key, v in sorted(env.items())), *replica.args]))
    return "\n".join(lines)
