"""The ``recscale`` command line.

    recscale train CONFIG [--nproc N] [--set key=value ...] [--init-from RUN_DIR] [--profile]
    recscale train --resume RUN_DIR [CONFIG] [--set trainer.epochs=N]
    recscale launch CONFIG --scheduler local_cwd|slurm -j NODESxPROCS [--dry-run]  (docs/launch.md)
    recscale status|logs|cancel HANDLE
    recscale plan CONFIG --world-size 64 --device cuda --hbm-gb 80 --ranks-per-node 8
    recscale eval CHECKPOINT [--data PATH | --split test]
    recscale flops CONFIG
    recscale config CONFIG [--set key=value ...]
    recscale models | presets
    recscale data synth|convert|inspect ...
    recscale report RUN_DIR ... | sweep | scaling-law | project   (docs/measuring.md)
    recscale export RUN_DIR --out DIR [--quantize int8] | predict ARTIFACT --data PATH --out FILE  (docs/serving.md)
    recscale features select RUN_DIR [--budget T] [--weights click=1,purchase=0.2]  (docs/feature_selection.md)

CONFIG is a preset name (``recscale presets``) or a YAML file. Every command checks the config
before doing anything else and fails with one clear message naming the key path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from recscale.configs import ConfigError
from recscale.launch import commands

log = logging.getLogger("recscale")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="recscale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, the libraries' own messages and warnings, full tracebacks on the console",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
        if optional:  # ``train --resume RUN_DIR`` continues with the run's own config
            p.add_argument("config", nargs="?", default=None, help="preset name or path to a YAML config")
        else:
            p.add_argument("config", help="preset name or path to a YAML config")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set trainer.batch_size=4096 (repeatable)",
        )

    p = sub.add_parser("train", help="train on this machine (torchrun, N local ranks)")
    config_args(p, optional=True)
    p.add_argument("--nproc", type=int, default=None, help="ranks on this machine (default: launch.nproc_per_node)")
    p.add_argument("--run-dir", default="", help="write into this (new or empty) directory instead of a fresh one")
    p.add_argument(
        "--resume", default="", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint"
    )
    p.add_argument(
        "--init-from",
        default="",
        metavar="RUN_DIR|CHECKPOINT",
        help="a new run starting from these weights (a run's best or newest checkpoint; fresh optimizer state)",
    )
    p.add_argument("--profile", action="store_true", help="torch.profiler trace + per-module MFU of a few steps")
    p.add_argument("--max-restarts", type=int, default=None, help="elastic restarts (default: launch.max_restarts)")
    p.set_defaults(func=commands.train)

    p = sub.add_parser("plan", help="plan the embedding tables for any cluster, without GPUs")
    config_args(p)
    p.add_argument("--world-size", type=int, required=True, help="ranks to plan for")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--hbm-gb", type=float, default=0.0, help="device memory per rank, GB (default: config)")
    p.add_argument("--ddr-gb", type=float, default=0.0, help="host memory per rank, GB (default: config)")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--batch-size-per-rank", type=int, default=0, help="default: trainer.batch_size / world size")
    p.add_argument("--out", default="", help="also write the plan as JSON here")
    p.set_defaults(func=commands.plan)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set; prints JSON")
    p.add_argument("checkpoint", help="a checkpoint directory (<run_dir>/checkpoints/step_N) or a run directory")
    p.add_argument("--data", default="", help="Parquet file or directory (default: the run's --split data)")
    p.add_argument(
        "--split",
        choices=["valid", "test"],
        default="valid",
        help="the run's data.valid_path, or its held-out data.test_path (default: valid)",
    )
    p.add_argument("--nproc", type=int, default=1, help="ranks to evaluate with (any number: tables are resharded)")
    p.add_argument("--batch-size", type=int, default=0, help="default: the run's trainer.batch_size")
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("flops", help="analytic FLOPs per example, per module")
    config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=commands.flops)

    p = sub.add_parser("config", help="print the resolved config as YAML (after --set overrides and checks)")
    config_args(p)
    p.add_argument("--world-size", type=int, default=0, help="also run the world-size checks")
    p.set_defaults(func=commands.show_config)

    p = sub.add_parser("models", help="list the model architectures")
    p.set_defaults(func=commands.models)
    p = sub.add_parser("presets", help="list the shipped config presets")
    p.set_defaults(func=commands.presets)

    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Command groups that live in their own modules."""
    from recscale.launch import data_cli, features_cli, launch_cli, measure_cli, serving_cli

    data_cli.register(sub)
    measure_cli.register(sub)  # report, sweep, scaling-law, project
    launch_cli.register(sub)  # launch, status, logs, cancel (TorchX)
    serving_cli.register(sub)  # export, predict
    features_cli.register(sub)  # features select


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recscale`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for library in ("torchrec", "matplotlib"):  # planner statistics; matplotlib's first-use font cache note
        logging.getLogger(library).setLevel(logging.INFO if args.verbose else logging.WARNING)
    from recscale.launch.entrypoint import VERBOSE, install_log_filters

    if args.verbose:
        os.environ[VERBOSE] = "1"  # this process's filters and every rank's see it
    install_log_filters()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, TimeoutError) as err:
        print(f"recscale {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (``recscale presets | head``): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as err:  # noqa: BLE001 - anything else: one line here, the traceback in a file
        if args.verbose:
            raise
        from recscale.launch.failures import one_line, save_traceback

        where = save_traceback(args.command)
        print(f"recscale {args.command}: error: {one_line(err)} (traceback: {where})", file=sys.stderr)
        return 1


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
