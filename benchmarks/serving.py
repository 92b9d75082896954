"""Serving speed on CPU: latency at batch 1 and throughput at batch 4096, fp32 against int8 tables.

    .venv/bin/python benchmarks/serving.py                       # quickstart; benchmarks/results/serving.json
    .venv/bin/python benchmarks/serving.py --preset frappe --calls 500

The model is the preset's, built with its seed (latency does not depend on trained values), exported
through the same path as ``recscale export`` (``assemble`` + ``export_program``) and loaded with the
artifact's runtime (``recscale.serving.load``). Each measured call is ``Predictor.predict`` on a
pyarrow table of random rows drawn inside each table: feature preparation (id mapping, offsets) plus
the exported graph, as a server would run it. One thread (``torch.set_num_threads(1)``); the load
average before and after is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"


def random_rows(features: dict, n: int, seed: int) -> pa.Table:
    """``n`` rows of the artifact's columns: standard-normal dense values, one id per sparse feature."""
    rng = np.random.default_rng(seed)
    columns = {name: rng.standard_normal(n).astype(np.float32) for name in features["dense"]}
    for spec in features["sparse"]:
        columns[spec["name"]] = rng.integers(0, spec["rows"], n)
    return pa.table(columns)


def write_artifact(preset: str, quantize: str, out: Path) -> None:
    """Export the preset's freshly built model into ``out`` (as ``recscale export`` lays it out)."""
    import shutil

    from recscale.configs import load_config
    from recscale.modules.build import build_model
    from recscale.serving import runtime
    from recscale.serving.export import assemble, export_program, feature_spec

    cfg = load_config(preset, [])
    built = build_model(cfg, sparse_device="cpu")
    weights = {name: bag.weight.detach() for name, bag in built.sparse.ebc.embedding_bags.items()}
    program = export_program(cfg, assemble(cfg, built, weights, quantize))
    out.mkdir(parents=True)
    torch.export.save(program, str(out / runtime.GRAPH))
    (out / runtime.FEATURES).write_text(json.dumps(feature_spec(cfg)))
    (out / runtime.MANIFEST).write_text(json.dumps({"format": runtime.ARTIFACT_FORMAT, "quantize": quantize}))
    shutil.copyfile(runtime.__file__, out / "serve.py")


def measure(artifact: Path, calls: int, big_calls: int) -> dict[str, float]:
    """p50 / p99 latency (ms) of one-row calls and rows/s of 4096-row calls."""
    from recscale.serving import load

    model = load(artifact)
    one = [random_rows(model.features, 1, seed) for seed in range(calls)]
    big = random_rows(model.features, 4096, 0)
    for table in one[:20]:
        model.predict(table)
    times = []
    for table in one:
        start = time.perf_counter()
        model.predict(table)
        times.append((time.perf_counter() - start) * 1e3)
    model.predict(big)
    start = time.perf_counter()
    for _ in range(big_calls):
        model.predict(big)
    seconds = time.perf_counter() - start
    times.sort()
    return {
        "latency_ms_p50_batch1": statistics.median(times),
        "latency_ms_p99_batch1": times[min(len(times) - 1, int(0.99 * len(times)))],
        "rows_per_s_batch4096": 4096 * big_calls / seconds,
        "artifact_bytes": sum(p.stat().st_size for p in artifact.iterdir()),
        "graph_bytes": (artifact / "model.pt2").stat().st_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--calls", type=int, default=300, help="one-row calls timed per variant")
    parser.add_argument("--big-calls", type=int, default=20, help="4096-row calls timed per variant")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in ("none", "int8"):
            write_artifact(args.preset, quantize, Path(tmp) / quantize)
            results["fp32" if quantize == "none" else quantize] = measure(
                Path(tmp) / quantize, args.calls, args.big_calls
            )
    data = {
        "preset": args.preset,
        "threads": 1,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "results": results,
    }
    write_results(Path(args.out), data)
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
