"""What each ``recscale`` command does (argument parsing is in ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from recscale.configs import JobConfig, config_to_dict, dump_config, load_config
from recscale.launch.local import run_local
from recscale.launch.resume import check_init_tables, init_checkpoint, nothing_to_do, resume_config
from recscale.trainer.job import check_job
from recscale.trainer.run_dir import CONFIG, SUMMARY, new_run_dir

log = logging.getLogger("recscale")

PROFILE_STEPS = 5
"""Steps ``recscale train --profile`` records (``metrics.profile_steps``)."""


def _load(args: argparse.Namespace) -> JobConfig:
    return load_config(args.config, args.overrides)


# -------------------------------------------------------------------------------------------- train


def train(args: argparse.Namespace) -> int:
    """Check, plan, prepare data, then run the job on ``--nproc`` local ranks with torchrun."""
    from recscale.data.prepare import prepare_data
    from recscale.sharding.topology import resolve_device

    resume_dir = Path(args.resume).expanduser() if args.resume else None
    init_from = getattr(args, "init_from", "")
    if resume_dir is not None:
        if getattr(args, "profile", False) or init_from:
            raise ValueError("--resume continues a run as it was started; --profile and --init-from cannot go with it")
        cfg = resume_config(resume_dir, args.config, args.overrides)
    elif not args.config:
        raise ValueError("CONFIG is required (a preset name or a YAML file), unless --resume RUN_DIR continues a run")
    else:
        cfg = _load(args)
        if getattr(args, "profile", False) and not cfg.metrics.profile_steps:
            cfg.metrics.profile_steps = PROFILE_STEPS
        if init_from:
            source = init_checkpoint(init_from)
            check_init_tables(source, cfg)
            cfg.checkpoint.init_from = str(source)
    nproc = cfg.launch.nproc_per_node if args.nproc is None else _ranks(args.nproc)
    device = resolve_device(cfg.trainer.device)
    check_job(cfg, nproc, device)
    _preflight_plan(cfg, nproc, device)
    paths = prepare_data(cfg.data, cfg.embeddings)
    log.info("data: train %s | valid %s", paths.train, paths.valid)

    from recscale.trainer.data import planned_steps  # (imports TorchRec: not at the CLI's start)

    total_steps = planned_steps(cfg, nproc)  # also: enough rows for one step
    if resume_dir is not None:
        done = nothing_to_do(resume_dir, total_steps)
        if done:
            print(f"recscale train: {done}")
            return 0
        run_dir = resume_dir
    elif args.run_dir:
        run_dir = Path(args.run_dir).expanduser()
        run_dir.mkdir(parents=True, exist_ok=True)
        if any(run_dir.iterdir()):
            raise ValueError(f"--run-dir {run_dir} is not empty (use --resume to continue a run)")
    else:
        run_dir = new_run_dir(cfg.launch.run_root, cfg.name)
    dump_config(cfg, run_dir / CONFIG)  # a resumed run's own, its length as extended
    log.info("run directory: %s", run_dir)
    restarts = cfg.launch.max_restarts if getattr(args, "max_restarts", None) is None else args.max_restarts
    if restarts < 0:
        raise ValueError(f"--max-restarts {restarts}: expected >= 0")
    verbose = getattr(args, "verbose", False)
    mode = cfg.metrics.progress_bar
    bar = mode == "always" or (mode == "auto" and sys.stderr.isatty())
    code = run_local(run_dir, nproc, resume=resume_dir is not None, max_restarts=restarts, verbose=verbose, bar=bar)
    if code != 0:  # run_local printed the failing rank's reason and log
        return code
    write_run_report(run_dir)
    _print_result(run_dir)
    return 0


def _ranks(nproc: int) -> int:
    """``--nproc`` as given, if it is a number of ranks."""
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected at least 1 rank")
    return nproc


def write_run_report(run_dir: Path) -> None:
    """``<run_dir>/report.html`` + ``report.md`` (a second or two); a failure is logged, not fatal."""
    from recscale.reports.report import write_report

    try:
        write_report([run_dir])
    except Exception as err:  # noqa: BLE001 - the run succeeded; a broken report must not fail it
        log.warning("could not write the report of %s: %s", run_dir, err)


def _preflight_plan(cfg: JobConfig, world_size: int, device: str) -> None:
    """Plan the tables once here, so a job that cannot be placed fails before any rank starts."""
    from recscale.modules.build import build_model
    from recscale.sharding.planner import plan_embeddings

    built = build_model(cfg, dense_device="meta")
    plan_embeddings(
        built.sparse,
        cfg.sharding,
        world_size=world_size,
        local_world_size=world_size,
        device=device,
        batch_size_per_rank=cfg.trainer.batch_size // world_size,
        sparse_optimizer=cfg.optimizer.sparse.name,
    )


def _print_result(run_dir: Path) -> None:
    summary = json.loads((run_dir / SUMMARY).read_text())
    final = summary["final_eval"]
    from recscale.trainer.task_metrics import format_metrics

    line = f"validation{format_metrics(final)}"
    tput = summary["throughput"]["examples_per_s"]
    mfu = summary.get("mfu")
    util = f"MFU {100 * mfu:.2f}%" if mfu is not None else "MFU unknown (no peak known for this device)"
    print(line)
    print(f"throughput: {tput:,.0f} examples/s on {summary['world_size']} x {summary['device']} | {util}")
    print(f"run directory: {run_dir}")
    report = run_dir / "report.html"
    if report.exists():
        print(f"report: {report}")


# --------------------------------------------------------------------------------------------- plan


def plan(args: argparse.Namespace) -> int:
    """Run the planner for a cluster of any size on a meta model and print the plan."""
    from recscale.modules.build import build_model
    from recscale.sharding.planner import plan_embeddings

    cfg = _load(args)
    topo = cfg.sharding.topology
    if args.hbm_gb:
        topo.hbm_gb = args.hbm_gb
    if args.ddr_gb:
        topo.ddr_gb = args.ddr_gb
    topo.ranks_per_node = args.ranks_per_node
    check_job(cfg, args.world_size, args.device)
    built = build_model(cfg, dense_device="meta")
    per_rank = args.batch_size_per_rank or max(1, cfg.trainer.batch_size // args.world_size)
    _, described = plan_embeddings(
        built.sparse,
        cfg.sharding,
        world_size=args.world_size,
        local_world_size=args.ranks_per_node,
        device=args.device,
        batch_size_per_rank=per_rank,
        sparse_optimizer=cfg.optimizer.sparse.name,
    )
    print(described.format_table())
    if args.out:
        described.save(Path(args.out))
        print(f"plan written to {args.out}")
    return 0


# --------------------------------------------------------------------------------------------- eval


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (any world size) on a Parquet data set; print the metrics as JSON.

    The checkpoint is found before any rank starts (a missing one is one line); the ranks' logs go to
    ``<run_dir>/logs/eval-<time>/``.
    """
    import time

    from recscale.launch.eval_entrypoint import resolve_checkpoint
    from recscale.launch.local import JobFailedError, run_eval_local

    checkpoint = resolve_checkpoint(Path(args.checkpoint))
    nproc = _ranks(args.nproc)
    split = getattr(args, "split", "valid")
    if args.data and split == "test":
        raise ValueError("--data and --split test: give one (--data evaluates any Parquet data)")
    data = args.data or (_test_path(checkpoint.parent.parent) if split == "test" else "")
    log_dir = checkpoint.parent.parent / "logs" / time.strftime("eval-%Y%m%d-%H%M%S")
    try:
        verbose = getattr(args, "verbose", False)
        bar = sys.stderr.isatty()
        result = run_eval_local(checkpoint, data, nproc, args.batch_size, log_dir, verbose, bar)
    except JobFailedError as failed:
        print(failed, file=sys.stderr)
        return 1
    if not args.data:
        result = {"split": split, **result}
    print(json.dumps(result, indent=2))
    return 0


def _test_path(run_dir: Path) -> str:
    """The run's ``data.test_path``, made absolute; a one-line error when the run has none."""
    cfg = load_config(str(run_dir / CONFIG), [])
    if not cfg.data.test_path:
        raise ValueError(
            f"--split test: the run's config ({run_dir / CONFIG}) has no data.test_path; "
            "set it when training, or evaluate any Parquet data with --data PATH"
        )
    path = Path(cfg.data.test_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.test_path of {run_dir / CONFIG}: {path} does not exist")
    return str(path.resolve())


# -------------------------------------------------------------------------------------------- flops


def flops(args: argparse.Namespace) -> int:
    """Analytic FLOPs per example of the dense arch, per module (forward, backward, train)."""
    from recscale.modules.build import dense_flops
    from recscale.modules.flops import total
    from recscale.modules.registry import get_spec

    cfg = _load(args)
    check_job(cfg, None, None)
    breakdown = dense_flops(cfg)
    whole = total(breakdown)
    if args.json:
        rows = {k: {"forward": v.forward, "backward": v.backward, "train": v.train} for k, v in breakdown.items()}
        rows["total"] = {"forward": whole.forward, "backward": whole.backward, "train": whole.train}
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{cfg.model.arch}: FLOPs per example (matmuls; embedding lookups are memory traffic, not FLOPs)")
    if get_spec(cfg.model.arch).uses_sequences and cfg.data.features.sequences:
        at = ", ".join(f"{q.name} {q.max_length}" for q in cfg.data.features.sequences)
        print(
            f"event sequences at their max_length ({at}): the padded count; training counts each batch at its "
            "real lengths (docs/measuring.md)"
        )
    print(f"{'module':<32} {'forward':>14} {'backward':>14} {'train':>14} {'share':>7}")
    for name, count in breakdown.items():
        share = 100 * count.train / whole.train if whole.train else 0.0
        print(f"{name:<32} {count.forward:>14,} {count.backward:>14,} {count.train:>14,} {share:>6.1f}%")
    print(f"{'total':<32} {whole.forward:>14,} {whole.backward:>14,} {whole.train:>14,} {100.0:>6.1f}%")
    print(f"= {whole.train / 1e6:.3f} MFLOP per training example ({whole.forward / 1e6:.3f} MFLOP forward)")
    if cfg.model.perturbation.kind != "none":  # the dense arch also runs on the perturbed rows
        kind = cfg.model.perturbation.kind
        print(f"  x2 with model.perturbation ({kind}): {2 * whole.train / 1e6:.3f} MFLOP per training example")
    return 0


# ------------------------------------------------------------------------------------ config, lists


def show_config(args: argparse.Namespace) -> int:
    """Print the resolved, checked config."""
    cfg = _load(args)
    check_job(cfg, args.world_size or None, None)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def models(args: argparse.Namespace) -> int:
    """List the registered architectures."""
    from recscale.modules.registry import MODEL_SPECS

    for name, spec in sorted(MODEL_SPECS.items()):
        print(f"{name:<16} {spec.description}")
    return 0


def presets(args: argparse.Namespace) -> int:
    """List the presets with the first comment line of each."""
    from recscale.configs.loader import PRESET_DIR, list_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
        note = first[0].lstrip("# ").split(":", 1)[-1].strip() if first and first[0].startswith("#") else ""
        print(f"{name:<24} {note}")
    return 0
