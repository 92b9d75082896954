"""The serving commands: export a run as an inference artifact, and score rows with one.

    recscale export RUN_DIR [--checkpoint best|latest|STEP] --out DIR [--quantize none|fp16|int8|int4]
    recscale predict ARTIFACT --data PATH --out preds.parquet [--batch-size N]

``register(subparsers)`` adds both to the ``recscale`` parser; each command is
``args.func(args) -> exit code`` and raises ``ValueError`` (or a subclass) for a user error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUANTIZE = ("none", "fp16", "int8", "int4")
"""``--quantize`` choices (``recscale.serving.tables.QUANTIZE``; not imported here: it would load torch)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``predict`` to a ``recscale`` argument parser."""
    p = subparsers.add_parser("export", help="write a self-contained inference artifact of a run (docs/serving.md)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--checkpoint", default="latest", help="best, latest (default) or a step number")
    p.add_argument("--out", required=True, help="the artifact directory to create (new or empty)")
    p.add_argument("--quantize", choices=QUANTIZE, default="none", help="how table rows are stored (row-wise)")
    p.set_defaults(func=export)

    p = subparsers.add_parser("predict", help="score Parquet, CSV or Criteo TSV rows with an exported artifact")
    p.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory from recscale export")
    p.add_argument(
        "--data",
        required=True,
        help="a prepared Parquet file or directory, or a raw CSV / Criteo TSV file read as the converter read it",
    )
    p.add_argument("--out", required=True, help="predictions Parquet to write (p_<label> columns, input order)")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per forward pass")
    p.set_defaults(func=predict)


def export(args: argparse.Namespace) -> int:
    """``recscale export``: prints the artifact's summary as JSON."""
    from recscale.serving.export import export_run

    start = time.perf_counter()
    manifest = export_run(Path(args.run_dir), str(args.checkpoint), Path(args.out), args.quantize)
    summary = {k: manifest[k] for k in ("model", "checkpoint", "step", "quantize", "files")}
    print(json.dumps({"out": str(Path(args.out).resolve()), **summary, "seconds": time.perf_counter() - start}))
    return 0


def predict(args: argparse.Namespace) -> int:
    """``recscale predict``: prints the number of rows scored as JSON."""
    from recscale.serving.runtime import predict_file

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    start = time.perf_counter()
    rows = predict_file(Path(args.artifact), Path(args.data), Path(args.out), batch_size=args.batch_size)
    print(json.dumps({"rows": rows, "out": str(Path(args.out).resolve()), "seconds": time.perf_counter() - start}))
    return 0
