"""Reader throughput on Criteo-shaped rows (13 dense + 26 single-hot sparse + label), per process.

    .venv/bin/python benchmarks/data_throughput.py [--rows 1048576] [--batch-size 4096]

1. Generates Criteo-shaped planted-truth Parquet (the ``criteo_kaggle`` feature schema and tables,
   row groups of 65,536 rows, snappy) into a temporary directory.
2. Reads one full training epoch with ``ParquetBatchReader`` (shuffle on: row-group order + a
   262,144-row in-buffer shuffle; ids checked against their tables; ``Batch`` with a KJT of 26 keys)
   in this process (``num_workers: 0``), best of ``--repeats``, and with loader workers.
3. Measures the training throughput of the ``dcnv2_criteo`` preset (or, while that preset does not
   exist, ``criteo_kaggle`` with the default DCN-V2 model) for comparison: forward + backward + step
   of the unsharded model in this process (one thread, like each of the trainer's ranks on
   this 2-core machine), with tables capped at 65,536 rows so the step is
   compute-bound rather than dominated by dense updates of huge tables (a generous training figure,
   so the ratio is a lower bound).

Writes ``benchmarks/results/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from results_io import write_results

from recscale.configs import list_presets, load_config
from recscale.data import ParquetBatchReader, generate_synthetic
from recscale.trainer.peaks import cpu_model

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"
TRAIN_TABLE_ROWS = 65_536


def read_epoch(reader: ParquetBatchReader) -> tuple[int, float]:
    start = time.perf_counter()
    examples = 0
    for batch in reader:
        examples += batch.batch_size
    return examples, time.perf_counter() - start


def training_throughput(preset: str, overrides: list[str], data_dir: Path, batch_size: int, steps: int) -> dict:
    from recscale.modules.build import build_model
    from recscale.modules.model import RecModel

    cfg = load_config(preset, overrides)
    for table in cfg.embeddings.tables:  # small tables: the step is compute-bound (a generous training figure)
        table.num_embeddings = min(table.num_embeddings, TRAIN_TABLE_ROWS)
    built = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    model = RecModel(built.sparse, built.dense)
    dense_opt = torch.optim.Adam(built.dense.parameters(), lr=1e-3)
    sparse_opt = torch.optim.SGD(built.sparse.parameters(), lr=0.01)
    cfg.data.reader.on_bad_row = "skip"  # ids beyond the capped tables become zero-weight rows, not errors
    reader = ParquetBatchReader(data_dir, cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=batch_size)
    batches = []
    for batch in reader:
        batches.append(batch)
        if len(batches) == steps + 2:
            break
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss, _ = model(batch)
        dense_opt.zero_grad()
        sparse_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
        times.append(time.perf_counter() - start)
    per_step = sorted(times[2:])[len(times[2:]) // 2]
    return {
        "preset": preset,
        "overrides": overrides,
        "model": cfg.model.arch,
        "examples_per_s": batch_size / per_step,
        "how": "median step of forward + backward + Adam (dense) / SGD (tables) of the unsharded model, "
        f"batch {batch_size}, tables capped at {TRAIN_TABLE_ROWS} rows, {torch.get_num_threads()} torch threads",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[2])
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    cfg = load_config(
        "criteo_kaggle",
        [
            "data.source=synthetic",
            f"data.synthetic.num_train={args.rows}",
            "data.synthetic.num_valid=4096",
            "data.synthetic.row_group_size=65536",
            "data.synthetic.click_rate=0.25",
        ],
    )
    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_synthetic(cfg.data, cfg.embeddings, Path(tmp) / "data")
        generate_s = time.perf_counter() - start
        train_dir = Path(tmp) / "data" / "train"
        runs = []
        for workers in [0, *args.workers]:
            reader_cfg = cfg.data.reader
            reader_cfg.num_workers = workers
            best = 0.0
            for _ in range(args.repeats if workers == 0 else 1):
                reader = ParquetBatchReader(
                    train_dir, cfg.data.features, cfg.embeddings, reader_cfg, batch_size=args.batch_size
                )
                examples, seconds = read_epoch(reader)
                best = max(best, examples / seconds)
            runs.append({"num_workers": workers, "examples_per_s": round(best)})
            print(f"num_workers={workers}: {best:,.0f} examples/s", flush=True)
        cfg.data.reader.num_workers = 0
        preset = "dcnv2_criteo" if "dcnv2_criteo" in list_presets() else "criteo_kaggle"
        overrides = [] if preset == "dcnv2_criteo" else ["model.arch=dcnv2"]
        training = training_throughput(preset, overrides, train_dir, args.batch_size, args.train_steps)
        print(f"training ({preset}): {training['examples_per_s']:,.0f} examples/s", flush=True)

    per_process = runs[0]["examples_per_s"]
    result = {
        "examples_per_s_per_process": per_process,
        "target_examples_per_s_per_process": 300_000,
        "ratio_to_training": round(per_process / training["examples_per_s"], 1),
        "runs": runs,
        "training": training,
        "settings": {
            "rows": args.rows,
            "batch_size": args.batch_size,
            "features": "label + 13 dense float32 + 26 single-hot int64 (criteo_kaggle schema and tables)",
            "row_group_size": 65536,
            "compression": "snappy",
            "shuffle": True,
            "shuffle_buffer_rows": cfg.data.reader.shuffle_buffer_rows,
            "hashing": "none (ids range-checked)",
            "generate_seconds": round(generate_s, 2),
        },
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1min_at_start": load_at_start,
            "note": "other processes share these 2 cores; the figure moves with their load",
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    write_results(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
