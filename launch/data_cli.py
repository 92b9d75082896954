"""The ``recscale data`` command group: generate, convert and inspect data.

    recscale data synth CONFIG [--set k=v ...] [--out DIR]
    recscale data convert criteo INPUT... [--out DIR] [--config CONFIG] [--layout kaggle|terabyte]
                                          [--valid FILE ...] [--test FILE ...] [--valid-fraction F] [--vocab DIR]
    recscale data convert csv INPUT... --config CONFIG [--out DIR] [--valid FILE ...] [--test FILE ...] [--vocab DIR]
    recscale data inspect PATH [--json]
    recscale data zipper CONFIG --out DIR [--synthetic] [--set k=v ...]
    recscale data attach-teacher DATA --predictions RUN_DIR --out DIR [--column NAME] [--domain-column C --domain D]
    recscale data partition CONFIG [--ids user,item] [--delay-column C] [--min-affinity A] [--pilot-steps N] [--json F]

``register(subparsers)`` adds the group to the ``recscale`` parser; each command is
``args.func(args) -> exit code`` and raises ``ValueError`` (or a subclass) for a user error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig, load_config, validate


def _config_args(p: argparse.ArgumentParser, default: str | None) -> None:
    if default is None:
        p.add_argument("config", help="preset name or path to a YAML config")
    else:
        p.add_argument("--config", default=default, help=f"preset name or YAML config (default: {default})")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.convert.categorical=vocab (repeatable)",
    )


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="training input files (plain or .gz)")
    p.add_argument("--out", default="", help="output directory (default: the parent of data.train_path)")
    p.add_argument("--valid", nargs="+", default=[], metavar="FILE", help="inputs whose rows all go to valid/")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE", help="held-out inputs whose rows all go to test/")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        help="send this fraction of INPUT rows to valid/ (overrides data.convert.valid_fraction; 0 with --valid)",
    )
    p.add_argument("--vocab", default=None, help="encode with the vocabularies of an earlier conversion (vocab mode)")
    p.add_argument("--skip-bad-rows", action="store_true", help="same as --set data.convert.on_bad_row=skip")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``data synth|convert|inspect`` to a ``recscale`` argument parser."""
    data = subparsers.add_parser("data", help="generate synthetic data, convert raw data, inspect Parquet")
    group = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = group.add_parser("synth", help="generate planted-truth synthetic Parquet (data.synthetic) and its claims")
    _config_args(p, None)
    p.add_argument("--out", default="", help="output directory (default: the cache, as training would)")
    p.set_defaults(func=synth)

    convert = group.add_parser("convert", help="convert raw data to Parquet")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser("criteo", help="Criteo TSV: Kaggle train.txt or 1TB day_N (.gz)")
    _convert_args(p)
    _config_args(p, "criteo_kaggle")
    p.add_argument("--layout", choices=["kaggle", "terabyte"], default="kaggle", help="which Criteo release")
    p.set_defaults(func=convert_criteo)
    p = formats.add_parser("csv", help="CSV with a header (BARS / FuxiCTR style); column roles from the config")
    _convert_args(p)
    _config_args(p, "")
    p.add_argument("--delimiter", default=",", help="field separator (default ',')")
    p.set_defaults(func=convert_csv)

    p = group.add_parser(
        "zipper", help="a delayed-label dataset at time NOW: each impression in one attribution window (data.zipper)"
    )
    _config_args(p, None)
    p.add_argument("--out", required=True, help="output directory (train/, valid/, zipper.json)")
    p.add_argument("--synthetic", action="store_true", help="read the planted-truth generator's data (data.synthetic)")
    p.set_defaults(func=zipper)

    p = group.add_parser(
        "attach-teacher", help="add a streaming teacher run's per-period predictions to a dataset as a teacher column"
    )
    p.add_argument("data", help="dataset root (train/, valid/ of period subdirectories) or one split")
    p.add_argument("--predictions", required=True, help="the teacher's run directory (or its predictions/ folder)")
    p.add_argument("--out", required=True, help="output dataset root (must not exist)")
    p.add_argument("--column", default="teacher", help="name of the new column (default: teacher)")
    p.add_argument("--domain-column", default="domain", help="the domain column (with --domain; default: domain)")
    p.add_argument("--domain", type=int, default=None, help="keep only this domain's rows after the join")
    p.set_defaults(func=attach_teacher)

    p = group.add_parser(
        "partition", help="which domains should share one model: id overlap, label rates and delays per domain pair"
    )
    _config_args(p, None)
    p.add_argument("--ids", default="", help="id features to compare (default: the first two sparse features)")
    p.add_argument("--delay-column", default=None, help="conversion delay column (default: the generator's, if any)")
    p.add_argument("--max-rows", type=int, default=1_000_000, help="read at most this many training rows (0 = all)")
    p.add_argument("--min-affinity", type=float, default=0.5, help="merge groups while their affinity is >= this")
    p.add_argument(
        "--pilot-steps",
        type=int,
        default=0,
        help="train a pilot this many batches, then compare the domains' trunk gradients (0 = no pilot)",
    )
    p.add_argument("--pilot-batches", type=int, default=8, help="batches the pilot's gradients are summed over")
    p.add_argument("--json", default="", help="also write the whole report to this file")
    p.set_defaults(func=partition)

    p = group.add_parser("inspect", help="schema, rows, row groups and stats of a Parquet file or directory")
    p.add_argument("path", help="Parquet file, directory, or a converter / generator output directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=inspect)


def _load(args: argparse.Namespace, extra: list[str] | None = None) -> JobConfig:
    if not args.config:
        raise ValueError("--config: expected a preset name or YAML file giving the column roles")
    cfg = load_config(args.config, [*args.overrides, *(extra or [])])
    validate(cfg)
    return cfg


def _print(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def synth(args: argparse.Namespace) -> int:
    """``recscale data synth``: generate into ``--out`` (or the cache) and print the claims."""
    from recscale.data import generate_synthetic, prepare_data

    cfg = _load(args, ["data.source=synthetic"])
    if args.out:
        claims = generate_synthetic(cfg.data, cfg.embeddings, args.out)
        where = Path(args.out).expanduser()
    else:
        paths = prepare_data(cfg.data, cfg.embeddings)
        claims, where = paths.claims(), paths.train.parent
    print(f"synthetic data in {where}", file=sys.stderr)
    _print({k: v for k, v in claims.items() if k != "synthetic"})
    return 0


def zipper(args: argparse.Namespace) -> int:
    """``recscale data zipper``: the job's training and validation data as a Zipper dataset in ``--out``."""
    from recscale.data import prepare_data
    from recscale.data.partition import period_subdirs
    from recscale.data.zipper import build_zipper

    cfg = _load(args, ["data.source=synthetic"] if args.synthetic else [])
    # the input has no window column yet: it is what this command writes
    source = dataclasses.replace(cfg.data, features=dataclasses.replace(cfg.data.features, window=""))
    paths = prepare_data(source, cfg.embeddings)
    out = Path(args.out).expanduser()
    if out.exists():
        raise ValueError(f"--out: {out} already exists")
    record = build_zipper(cfg.data, paths.train, paths.valid, out)
    print(f"wrote {out}: train with data.features.window={record['window_column']}", file=sys.stderr)
    if record["order"] == "arrival":
        days = len(period_subdirs(out / "train"))
        print(
            f"{out / 'train'}: {days} days in arrival order; train in that order with trainer.streaming.enabled=true, "
            "or data.reader.shuffle=false on one rank",
            file=sys.stderr,
        )
    shares = record["seen_share"]
    if isinstance(shares, list) and len(shares) > 1:
        listed = ",".join(f"{x:.4f}" for x in shares[:-1])
        print(f"scaled window heads: start them at model.tasks.N.window_shares=[{listed}]", file=sys.stderr)
    _print(record)
    return 0


def attach_teacher(args: argparse.Namespace) -> int:
    """``recscale data attach-teacher``: the dataset with a teacher column, in ``--out``."""
    from recscale.data.teacher_join import attach_teacher as join

    predictions = Path(args.predictions).expanduser()
    if (predictions / "predictions").is_dir():
        predictions = predictions / "predictions"
    out = Path(args.out).expanduser()
    result = join(Path(args.data).expanduser(), predictions, out, args.column, args.domain_column, args.domain)
    print(f"wrote {out}: train with data.features.teacher={args.column}", file=sys.stderr)
    _print({"rows": result.rows, "rows_with_a_teacher_score": result.scored, "teacher_on_these_rows": result.teacher})
    for task, quality in result.teacher.items():
        print(
            f"the teacher's mean NE on these rows ({task}): {quality['mean_ne']:.4f}, beside a plain student's "
            "(summary.json: streaming.mean_ne over the same periods): where the teacher was the worse of the two, "
            "model.teacher.head=auxiliary did better than distilling into the served head (docs/distillation.md)",
            file=sys.stderr,
        )
    return 0


def partition(args: argparse.Namespace) -> int:
    """``recscale data partition``: the Partitioner's report on the job's training split (``data/partitioner.py``)."""
    from recscale.configs.tasks import resolve_tasks
    from recscale.data import prepare_data
    from recscale.data.partitioner import collect, domain_count, report

    cfg = _load(args)
    f, s = cfg.data.features, cfg.data.synthetic
    if not f.domain:
        raise ValueError("data.features.domain: the partition report compares domains; expected a domain column")
    num_domains = len(f.domain_names) or (s.num_domains if cfg.data.source == "synthetic" else 0)
    sparse = [x.name for x in f.sparse]
    ids = [x for x in args.ids.split(",") if x] or sparse[:2]
    unknown = [x for x in ids if x not in sparse]
    if unknown:
        raise ValueError(f"--ids: {', '.join(unknown)} not among data.features.sparse ({', '.join(sparse)})")
    if not 0.0 <= args.min_affinity <= 1.0:
        raise ValueError(f"--min-affinity: expected a value in [0, 1], got {args.min_affinity}")
    delay = (
        args.delay_column if args.delay_column is not None else s.delay_column if cfg.data.source == "synthetic" else ""
    )
    tasks = resolve_tasks(cfg)
    train = prepare_data(cfg.data, cfg.embeddings).train
    num_domains = num_domains or domain_count(train, f.domain)  # unnamed domains: the ids the data holds
    if num_domains < 2:
        raise ValueError(f"{train}: column {f.domain!r} holds {num_domains} domain(s); the report needs at least two")
    stats = collect(train, f.domain, num_domains, ids, tasks, delay, args.max_rows)
    names = [f.domain_names[d] if d < len(f.domain_names) else f"domain{d}" for d in range(num_domains)]
    cosine = None
    if args.pilot_steps:
        from recscale.trainer.pilot_gradients import pilot_gradient_cosine

        cosine = pilot_gradient_cosine(cfg, train, num_domains, args.pilot_steps, args.pilot_batches)
    result = report(stats, names, tasks, args.min_affinity, cosine)
    if args.json:
        from recscale.trainer.run_dir import write_json

        write_json(Path(args.json), result)
    print(format_partition(result))
    return 0


def format_partition(result: dict[str, Any]) -> str:
    """The report as text: the affinity matrix with its parts, then the groups."""
    names: list[str] = result["domains"]
    width = max(8, *(len(n) for n in names))
    lines = [f"domains: {', '.join(f'{n} ({r} rows)' for n, r in zip(names, result['rows'], strict=True))}"]
    for title, matrix in [
        *((f"shared traffic, {f}", m) for f, m in result["shared_traffic"].items()),
        ("label similarity", result["label_similarity"]),
        *([("pilot gradient cosine", result["gradient_cosine"])] if result["gradient_cosine"] else []),
        ("affinity", result["affinity"]),
    ]:
        lines += ["", title, " " * width + "".join(f"{n:>{width + 1}}" for n in names)]
        lines += [
            f"{n:<{width}}" + "".join(f"{v:>{width + 1}.3f}" for v in row) for n, row in zip(names, matrix, strict=True)
        ]
    groups = "; ".join(", ".join(g) for g in result["groups"])
    ids = ",".join("[" + ",".join(map(str, g)) + "]" for g in result["group_ids"])
    lines += ["", f"groups (affinity >= {result['min_affinity']}): {groups}"]
    lines += [f"one model, untied per group: --set model.lattice.domain_groups=[{ids}]"]
    return "\n".join(lines)


def _out_dir(args: argparse.Namespace, cfg: JobConfig) -> Path:
    """``--out``, or the common parent of ``data.train_path`` and ``data.valid_path``."""
    if args.out:
        return Path(args.out).expanduser()
    train, valid = Path(cfg.data.train_path).expanduser(), Path(cfg.data.valid_path).expanduser()
    if cfg.data.train_path and train.name == "train" and valid.name == "valid" and train.parent == valid.parent:
        return train.parent
    raise ValueError(
        "--out: expected an output directory (data.train_path / valid_path do not name <dir>/train, <dir>/valid)"
    )


def _convert_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.valid_fraction is not None:
        extra.append(f"data.convert.valid_fraction={args.valid_fraction}")
    elif args.valid:  # the --valid files are the validation set: no training rows are moved there too
        extra.append("data.convert.valid_fraction=0")
    if args.skip_bad_rows:
        extra.append("data.convert.on_bad_row=skip")
    return extra


def _report(stats: dict[str, object], out: Path) -> None:
    print(f"wrote {out}", file=sys.stderr)
    shown = ("rows", "label_rate", "skipped_rows", "skipped_by_reason", "remap", "graphhash", "seconds")
    _print({k: stats[k] for k in shown if k in stats})


def convert_criteo(args: argparse.Namespace) -> int:
    """``recscale data convert criteo``."""
    from recscale.data import convert_criteo as run

    cfg = _load(args, _convert_overrides(args))
    out = _out_dir(args, cfg)
    stats = run(
        args.inputs,
        out,
        cfg.data,
        cfg.embeddings,
        layout=args.layout,
        valid_inputs=args.valid,
        test_inputs=args.test,
        vocab=args.vocab,
        progress=not args.no_progress,
    )
    _report(stats, out)
    return 0


def convert_csv(args: argparse.Namespace) -> int:
    """``recscale data convert csv``."""
    from recscale.data import convert_csv as run

    cfg = _load(args, _convert_overrides(args))
    out = _out_dir(args, cfg)
    stats = run(
        args.inputs,
        out,
        cfg.data,
        cfg.embeddings,
        valid_inputs=args.valid,
        test_inputs=args.test,
        vocab=args.vocab,
        delimiter=args.delimiter,
        progress=not args.no_progress,
    )
    _report(stats, out)
    return 0


def inspect(args: argparse.Namespace) -> int:
    """``recscale data inspect``."""
    from recscale.data.inspection import format_inspection, inspect_path

    info = inspect_path(args.path)
    if args.json:
        _print(info)
    else:
        print(format_inspection(info))
    return 0
