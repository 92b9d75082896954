"""``recscale scaling-law``: train a family of model sizes on the same data and fit quality vs compute.

    recscale scaling-law wukong_law --sizes xs,s,m,l,xl          # presets wukong_law_xs ... wukong_law_xl
    recscale scaling-law quickstart --size narrow model.over_arch=[32] --size wide model.over_arch=[512,256]

A size is either a name in ``--sizes`` (the preset ``<CONFIG>_<name>`` if there is one, else a preset
or YAML file of that name) or an override group ``--size LABEL KEY=VALUE ...`` applied to CONFIG.
``--set`` applies to every size. All sizes must read the same data (the same ``data`` and
``embeddings`` sections); they train one after the other on ``--nproc`` local ranks into
``<out>/runs/<label>``. Then ``recscale.reports.law`` fits the power law (Wukong) and the log-linear
slope (Kunlun) and the command writes ``<out>/scaling_law.json`` and ``<out>/report.html``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig, config_to_dict, load_config
from recscale.configs.loader import PRESET_DIR
from recscale.launch.projection import write_json_atomic
from recscale.launch.sweep import get_scheduler
from recscale.reports import law
from recscale.reports.rundata import SCALING_LAW, load_run
from recscale.trainer.run_dir import SUMMARY

log = logging.getLogger("recscale")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``recscale scaling-law``."""
    p = sub.add_parser("scaling-law", help="train model sizes on the same data, fit quality vs compute")
    p.add_argument("config", help="base preset or YAML (sizes named <config>_<size> are its family)")
    p.add_argument("--sizes", default="", help="comma-separated sizes: <config>_<name> presets, presets or YAMLs")
    p.add_argument(
        "--size",
        dest="size_groups",
        action="append",
        nargs="+",
        default=[],
        metavar="LABEL KEY=VALUE",
        help="a size as CONFIG plus overrides (repeatable)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nproc", type=int, default=1, help="ranks per run")
    p.add_argument("--metric", choices=list(law.METRICS), default="logloss", help="quality on the y axis")
    p.add_argument("--bootstrap", type=int, default=500, help="power-law bootstrap refits")
    p.add_argument("--scheduler", default="local", help="local (torchrun here), local_cwd or slurm (TorchX)")
    p.add_argument("--out", default="", help="study directory (default: <run_root>/law-<config>-<time>)")
    p.add_argument("--results", default="", help="also write the points and fits here (e.g. benchmarks/results/...)")
    p.set_defaults(func=run_command)


def resolve_sizes(args: argparse.Namespace) -> list[tuple[str, JobConfig]]:
    """(label, config) per size, in the order given.

    Raises:
        ValueError: no size, a duplicate label, or sizes that read different data.
    """
    sizes: list[tuple[str, JobConfig]] = []
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        family = f"{Path(args.config).stem}_{name}"
        source = family if (PRESET_DIR / f"{family}.yaml").is_file() else name
        sizes.append((name, load_config(source, args.overrides)))
    for group in args.size_groups:
        label, *overrides = group
        if "=" in label:
            raise ValueError(f"--size {' '.join(group)}: the first word is the size's label, then KEY=VALUE pairs")
        sizes.append((label, load_config(args.config, [*args.overrides, *overrides])))
    if len(sizes) < 2:
        raise ValueError("recscale scaling-law: give at least 2 sizes (--sizes a,b,... or --size LABEL K=V ...)")
    labels = [label for label, _ in sizes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recscale scaling-law: size labels repeat: {labels}")
    reference = _data_of(sizes[0][1])
    for label, cfg in sizes[1:]:
        if _data_of(cfg) != reference:
            raise ValueError(
                f"size {label!r}: its data or embeddings sections differ from size {labels[0]!r}; a scaling law "
                "compares models on the same data"
            )
    return sizes


def _data_of(cfg: JobConfig) -> dict[str, Any]:
    d = config_to_dict(cfg)
    return {"data": d["data"], "embeddings": d["embeddings"]}


def run_command(args: argparse.Namespace) -> int:
    """Train every size, fit, write ``scaling_law.json`` and the report."""
    from recscale.reports.report import write_report

    sizes = resolve_sizes(args)
    scheduler = get_scheduler(args.scheduler)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(sizes[0][1].launch.run_root).expanduser()
    out = Path(args.out).expanduser() if args.out else root / f"law-{Path(args.config).stem}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    runs, labels = [], []
    started = time.time()
    for label, cfg in sizes:
        run_dir = out / "runs" / label
        log.info("scaling law: size %s -> %s", label, run_dir)
        code = scheduler.run(cfg, run_dir, args.nproc)
        if code != 0 or not (run_dir / SUMMARY).is_file():
            raise RuntimeError(f"size {label!r} failed (exit code {code}); logs in {run_dir / 'logs'}")
        runs.append(load_run(run_dir))
        labels.append(label)
    result = law.analyze(runs, labels, args.metric, args.bootstrap)
    index = {
        "kind": "scaling_law",
        "config": args.config,
        "sizes": labels,
        "overrides": args.overrides,
        "nproc": args.nproc,
        "bootstrap": args.bootstrap,
        "runs": [{"label": lab, "run_dir": str((out / "runs" / lab).relative_to(out))} for lab in labels],
        "device": runs[0].summary.get("device_name"),
        "wall_time_s": time.time() - started,
        **result,
    }
    for p in index["points"]:
        p["run_dir"] = str(Path(p["run_dir"]).relative_to(out))
    write_json_atomic(out / SCALING_LAW, index)
    if args.results:
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        machine = {"machine": platform.machine(), "python": platform.python_version()}
        write_json_atomic(results, {**index, "study_dir": str(out), **machine})
    _print_fits(result)
    print(f"scaling-law directory: {out}")
    print(f"report: {write_report([out])}")
    return 0


def _print_fits(result: dict[str, Any]) -> None:
    for p in result["points"]:
        print(f"{p['label']:>8}: {p['mflop_train']:10.4f} MFLOP/example  {result['metric']} {p['y']:.5f}")
    if result["power_law"]:
        f = result["power_law"]
        print(
            f"power law: y = {f['a']:.5g} + {f['b']:.5g} x^{f['c']:.4g}  (c in [{f['c_ci95'][0]:.3g}, "
            f"{f['c_ci95'][1]:.3g}])"
        )
    if result["log_linear"]:
        g = result["log_linear"]
        print(
            f"log-linear: eta = {g['eta']:.5g} per e-fold of compute ({g['eta_per_doubling']:.5g} per doubling), "
            f"95% [{g['eta_ci95'][0]:.3g}, {g['eta_ci95'][1]:.3g}], R^2 {g['r2']:.3f}"
        )
    print(f"compute spans {result['compute_span']:.1f}x")
