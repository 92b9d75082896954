"""``recscale features select``: Lattice's Filter on a trained run (docs/feature_selection.md).

    recscale features select RUN_DIR [--checkpoint latest|best|N] [--budget T] [--repeats 3] [--seed 0]
                             [--batch-size B] [--max-batches K] [--weights click=0.5,purchase=0.5]
                             [--nproc N] [--out selected.yaml] [--json out.json]

The arguments are checked here; then ``--nproc`` local ranks (torchrun, as ``recscale eval``) load the
run's checkpoint sharded and evaluate it on the run's validation data ``1 + features x repeats`` times,
each time with one feature permuted (``recscale.launch.features_entrypoint``). Rank 0 writes the run's
config with the Filter's dropped features (and the tables only they read) removed, and hands the result
back; this process prints each task's importance ranking, the Pareto fronts, the features the Filter
keeps and those the weighted-sum baseline keeps. A failing rank is one console line (its reason and log).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from recscale.configs import JobConfig, config_from_dict, config_to_dict
from recscale.configs.tasks import resolve_tasks

log = logging.getLogger("recscale")

DEFAULT_OUT = "selected_features.yaml"
"""Where the selected config goes by default, inside the run directory."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``features select`` to a ``recscale`` argument parser."""
    group = subparsers.add_parser("features", help="feature selection on a trained run (docs/feature_selection.md)")
    sub = group.add_subparsers(dest="features_command", required=True, metavar="FEATURES_COMMAND")
    p = sub.add_parser(
        "select",
        help="Lattice's Filter: Pareto-optimal features across tasks by permutation importance",
        description=(
            "Permute each sparse feature and dense column of the run's validation data in turn, measure how much "
            "each task's NE rises, keep the features of the successive Pareto fronts up to --budget, and write "
            "the run's config without the others. Runs on --nproc local ranks (torchrun), as recscale eval does."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the trained run's directory")
    p.add_argument("--checkpoint", default="latest", help="latest (default), best or a step number")
    p.add_argument("--budget", type=int, default=None, help="features to keep (default: half the candidates)")
    p.add_argument("--repeats", type=int, default=3, help="permutations per feature, averaged (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations and of the Filter's random fill")
    p.add_argument(
        "--floor",
        type=float,
        default=0.01,
        help="count an importance below this fraction of its task's largest one as 0 (default 0.01; 0 = only "
        "clip at 0)",
    )
    p.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: trainer.batch_size)")
    p.add_argument("--max-batches", type=int, default=0, help="evaluate this many batches only (default: all)")
    p.add_argument(
        "--weights",
        default="",
        metavar="TASK=W,...",
        help="task weights of the weighted-sum baseline (default: model.tasks[*].weight)",
    )
    p.add_argument("--nproc", type=int, default=1, help="ranks to evaluate with (any number: tables are resharded)")
    p.add_argument("--out", default="", help=f"selected config YAML (default: RUN_DIR/{DEFAULT_OUT})")
    p.add_argument("--json", default="", help="also write the importances, fronts and selections as JSON here")
    p.set_defaults(func=select)


# ------------------------------------------------------------------------------------------ inputs


def parse_weights(text: str, tasks: list[str], defaults: list[float]) -> list[float]:
    """``click=0.5,purchase=0.5`` -> one weight per task, in task order; every task must be named."""
    if not text:
        return defaults
    given: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in tasks:
            raise ValueError(f"--weights {text!r}: expected TASK=WEIGHT pairs for the tasks {', '.join(tasks)}")
        try:
            given[name] = float(value)
        except ValueError:
            raise ValueError(f"--weights {text!r}: {value!r} is not a number") from None
        if not math.isfinite(given[name]) or given[name] < 0:
            raise ValueError(f"--weights {text!r}: expected weights >= 0, got {value}")
    missing = [t for t in tasks if t not in given]
    if missing:
        raise ValueError(f"--weights {text!r}: no weight for {', '.join(missing)}")
    return [given[t] for t in tasks]


def run_config(run_dir: Path) -> JobConfig:
    """The run's own config (``RUN_DIR/config.yaml``); a missing run directory is one line."""
    from recscale.trainer.run_dir import CONFIG

    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG).is_file():
        raise ValueError(f"{run_dir}: not a run directory (no {CONFIG})")
    return config_from_dict(yaml.safe_load((run_dir / CONFIG).read_text()))


# ------------------------------------------------------------------------------------------ the config


def selected_config(cfg: JobConfig, keep: set[str], data_paths: tuple[str, str] | None = None) -> JobConfig:
    """``cfg`` with the sparse and dense features outside ``keep`` removed, with the tables no feature reads.

    Table entries in ``sharding.constraints`` / ``sharding.manual`` and the Wukong per-feature options of
    removed features go too; ``checkpoint.init_from`` is cleared (the tables changed). ``data_paths``
    (train, valid) turns a synthetic source into Parquet at those paths: the generator draws a different
    data set for a different feature list, so a retrained selection must read the rows the run read.
    """
    out = copy.deepcopy(cfg)
    f = out.data.features
    f.sparse = [s for s in f.sparse if s.name in keep]
    f.dense = [d for d in f.dense if d in keep]
    used = {s.table for s in f.sparse} | {q.table for q in f.sequences}
    out.embeddings.tables = [t for t in out.embeddings.tables if t.name in used]
    sharding = out.sharding
    sharding.constraints = {k: v for k, v in sharding.constraints.items() if k == "*" or k in used}
    sharding.manual = {k: v for k, v in sharding.manual.items() if k in used}
    wukong = out.model.wukong
    wukong.tokens_per_feature = {k: v for k, v in wukong.tokens_per_feature.items() if k in keep}
    wukong.grouped_features = [n for n in wukong.grouped_features if n in keep]
    out.checkpoint.init_from = ""
    if data_paths is not None and out.data.source == "synthetic":
        out.data.source = "parquet"
        out.data.train_path, out.data.valid_path = data_paths
    return out


def write_config(cfg: JobConfig, path: Path) -> None:
    """Write ``cfg`` as YAML atomically (a temporary name in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ the command


def select(args: argparse.Namespace) -> int:
    """``recscale features select`` (module docstring)."""
    from recscale.trainer.feature_filter import candidates

    run_dir = Path(args.run_dir).expanduser().resolve()
    cfg = run_config(run_dir)
    tasks = resolve_tasks(cfg)
    parse_weights(args.weights, [t.name for t in tasks], [t.weight for t in tasks])  # rank 0 uses them
    num = len(candidates(cfg.data.features))
    budget = math.ceil(num / 2) if args.budget is None else args.budget
    if not 0 < budget <= num:
        raise ValueError(f"--budget {args.budget}: expected 1..{num} (the run has {num} candidate features)")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected at least 1")
    if not 0 <= args.floor < 1:
        raise ValueError(f"--floor {args.floor}: expected a fraction in [0, 1)")
    if args.max_batches < 0 or args.batch_size < 0:
        raise ValueError("--max-batches / --batch-size: expected >= 0")
    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: expected at least 1 rank")
    rows = args.batch_size or cfg.trainer.batch_size
    if rows % args.nproc:
        raise ValueError(
            f"--batch-size {rows}{'' if args.batch_size else ' (trainer.batch_size)'}: expected a multiple of "
            f"--nproc {args.nproc} (each rank evaluates an equal share of every batch)"
        )
    import time

    from recscale.launch.local import JobFailedError, run_features_local
    from recscale.serving.export import resolve_checkpoint

    checkpoint = resolve_checkpoint(run_dir, args.checkpoint)  # a missing one is one line, before any rank starts
    out = Path(args.out).expanduser().resolve() if args.out else run_dir / DEFAULT_OUT
    rank_args = ["--run-dir", str(run_dir), "--checkpoint", str(checkpoint), "--selected", str(out)]
    rank_args += ["--budget", str(budget), "--weights", args.weights, "--repeats", str(args.repeats)]
    rank_args += ["--seed", str(args.seed), "--floor", repr(args.floor), "--batch-size", str(args.batch_size)]
    rank_args += ["--max-batches", str(args.max_batches)]
    if args.json:
        rank_args += ["--json", str(Path(args.json).expanduser().resolve())]
    log_dir = run_dir / "logs" / time.strftime("features-%Y%m%d-%H%M%S")
    try:
        result = run_features_local(rank_args, args.nproc, log_dir, getattr(args, "verbose", False))
    except JobFailedError as failed:
        print(failed, file=sys.stderr)
        return 1
    print(format_result(result))
    from recscale.configs import collect_problems

    problems = collect_problems(config_from_dict(yaml.safe_load(out.read_text())))
    if problems:
        log.warning("the selected config needs an edit before training: %s", problems[0])
    return 0


def format_result(result: dict[str, Any]) -> str:
    """The console report: the importance table, the fronts, both selections."""
    tasks: list[str] = result["tasks"]
    imp: dict[str, dict[str, dict[str, float]]] = result["importance"]
    front_of = {n: k for k, front in enumerate(result["fronts"]) for n in front}
    ranks = {t: {n: r for r, n in enumerate(sorted(imp, key=lambda n: -imp[n][t]["value"]), 1)} for t in tasks}
    metric = "NE" if all(m.startswith("ne") for m in result["metrics"]) else "NE (MSE: relative)"
    floor = f", entries under {result['floor']:g} x the task's largest set to 0" if result["floor"] else ""
    lines = [
        f"importance: rise of each task's {metric} with the feature permuted, mean of {result['repeats']} "
        f"permutations clipped at 0{floor} (+- std over them; rank per task)",
    ]
    width = max(12, *(len(n) for n in imp))
    lines.append(f"{'feature':<{width}}  " + "  ".join(f"{t:>24}" for t in tasks) + "  front  filter  weighted")
    kept, base = set(result["filter"]["kept"]), set(result["weighted_sum"]["kept"])
    for name in sorted(imp, key=lambda n: (front_of[n], list(imp).index(n))):
        cells = []
        for t in tasks:
            v = imp[name][t]
            cells.append(f"{v['value']:>9.5f} +-{v['std']:.5f} ({ranks[t][name]:>2})")
        mark = f"{front_of[name] + 1:>5}  {'keep' if name in kept else '-':>6}  {'keep' if name in base else '-':>8}"
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>24}" for c in cells) + f"  {mark}")
    lines.append("fronts: " + " | ".join(f"{k + 1}: {', '.join(f)}" for k, f in enumerate(result["fronts"])))
    n, budget = len(imp), result["budget"]
    lines.append(f"filter keeps {len(kept)} of {n} (budget {budget}): {', '.join(result['filter']['kept'])}")
    shown = ", ".join(f"{t}={w:g}" for t, w in result["weights"].items())
    lines.append(f"weighted sum ({shown}) keeps: {', '.join(result['weighted_sum']['kept'])}")
    only_filter, only_base = sorted(kept - base), sorted(base - kept)
    if only_filter or only_base:
        lines.append(
            f"they differ: filter only {', '.join(only_filter) or '-'}; weighted sum only {', '.join(only_base) or '-'}"
        )
    lines.append(f"selected config (the filter's features): {result['config']}")
    return "\n".join(lines)
