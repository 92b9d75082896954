"""Measurement commands: ``report``, ``sweep``, ``scaling-law``, ``project`` (docs/measuring.md).

recscale report RUN_DIR [RUN_DIR | SWEEP_DIR | LAW_DIR ...] [--out PATH]
recscale sweep CONFIG --world-sizes 1,2,4 [--mode weak|strong] [--scheduler local]
recscale scaling-law CONFIG --sizes xs,s,m [--metric logloss]
recscale project CONFIG --nodes 1,2,4,...,64 (--run RUN_DIR | --benchmark JSON --model M) --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the measurement commands to the ``recscale`` parser."""
    from recscale.launch import projection, scaling_law, sweep

    p = sub.add_parser("report", help="HTML report (+ Markdown twin) of runs, sweeps, scaling-law studies")
    p.add_argument("inputs", nargs="+", help="run directories, sweep or scaling-law directories")
    p.add_argument("--out", default="", help="HTML path or directory (default: <input>/report.html for one input)")
    p.set_defaults(func=report)
    sweep.register(sub)
    scaling_law.register(sub)
    projection.register(sub)


def report(args: argparse.Namespace) -> int:
    """Write the report and print its path."""
    from recscale.reports.report import write_report

    out = Path(args.out).expanduser() if args.out else None
    print(f"report: {write_report([Path(p) for p in args.inputs], out)}")
    return 0
