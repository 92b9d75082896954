"""Managed-collision tables against modulo hashing at equal rows, on Criteo-shaped data with more ids than rows.

    .venv/bin/python benchmarks/managed_collisions.py                     # 3 arms x seeds 0-4, 2 ranks: ~25 min
    .venv/bin/python benchmarks/managed_collisions.py --seeds 0 --arms modulo,managed   # one pair

The data comes from the planted-truth generator in the shape of Criteo (13 dense features, 26 single-hot
sparse features with Criteo Kaggle's cardinalities divided by ``--scale``, ids drawn from a Zipf law), so
the best achievable AUC (the oracle) is known. The tables of the features with more than ``--big`` distinct
ids are shrunk by ``--compression`` in the ``modulo`` and ``managed`` arms, to the same rows:

* ``full``: every table holds every id (the upper bound);
* ``modulo``: id mod rows (``hashing: modulo``): head and tail ids collide at random;
* ``managed``: ``collisions: managed`` (LFU, a round every step): the most frequent ids own their rows,
  the rest share the last one; a row handed to a new id starts from zero (``evicted_rows: reset``);
* ``managed_keep``: the same with ``evicted_rows: keep`` (the new id inherits the evicted id's row);
* ``managed_i<N>`` (e.g. ``managed_i8``): ``managed`` with a round every N steps (``eviction_interval``).

Every run trains the same DCN-V2 for one epoch through ``recscale train`` on 2 local ranks. Results go to
``benchmarks/results/managed_collisions.json``: validation AUC and NE per arm and seed, the paired AUC gain
of ``managed`` over ``modulo`` with its 95% Student-t interval (target: > 0), and the throughput of each
arm, with the managed/modulo ratio per seed (runs alternate arms within a seed, so each ratio is taken
side by side; the median over seeds is reported).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from cli_runs import ROOT, quiet, train
from results_io import write_result_key, write_results
from verdicts import at_least, t_interval

from recscale.configs import load_config
from recscale.data.prepare import prepare_data
from recscale.trainer.peaks import cpu_model

CRITEO_KAGGLE = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip
"""Distinct values of Criteo Kaggle's 26 categorical columns (the shape of the id space)."""


def cardinalities(scale: int) -> list[int]:
    """Criteo's cardinalities divided by ``scale`` (at least 4 ids each)."""
    return [max(4, n // scale) for n in CRITEO_KAGGLE]


def job(card: list[int], rows: list[int], arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """The job config (as a dict) of one arm: ``rows[i]`` rows for feature ``c<i>`` (``card[i]`` ids)."""
    sparse, tables = [], []
    for i, (ids, n) in enumerate(zip(card, rows, strict=True)):
        shrunk = n < ids
        sparse.append(
            {"name": f"c{i}", "table": f"t{i}", "hashing": "modulo" if shrunk and arm == "modulo" else "none"}
        )
        table: dict[str, Any] = {"name": f"t{i}", "num_embeddings": n}
        if shrunk and arm.startswith("managed"):
            table["collisions"] = "managed"
            if arm == "managed_keep":
                table["managed"] = {"evicted_rows": "keep"}
            elif arm.startswith("managed_i"):
                table["managed"] = {"eviction_interval": int(arm.removeprefix("managed_i"))}
        tables.append(table)
    return {
        "name": f"managed_collisions_{arm}",
        "extends": "quickstart",
        "data": {
            "features": {
                "labels": ["label"],
                "dense": [f"d{i}" for i in range(13)],
                "sparse": sparse,
                "oracle": "true_prob",
            },
            "synthetic": {
                "num_train": args.train_rows,
                "num_valid": args.valid_rows,
                "click_rate": 0.25,
                "zipf_exponent": args.zipf,
                "hierarchical_scale": 0.6,
            },
        },
        "embeddings": {"dim": 16, "tables": tables},
        "trainer": {"epochs": 1, "batch_size": args.batch_size},
    }


def write_job(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(preset: Path, seed: int, data: Any, work: Path, nproc: int) -> dict[str, Any]:
    sets = [
        f"seed={seed}",
        "data.source=parquet",
        f"data.train_path={data.train}",
        f"data.valid_path={data.valid}",
        *quiet(work / "runs"),
    ]
    started = time.perf_counter()
    run_dir, summary = train(str(preset), sets, nproc=nproc)
    final = summary["final_eval"]
    return {
        "seed": seed,
        "valid_auc": final["auc"],
        "valid_ne": final["ne"],
        "oracle_auc": final.get("oracle_auc"),
        "examples_per_s": summary["throughput"]["examples_per_s"],
        "wall_s": time.perf_counter() - started,
        "run_dir": str(run_dir),
    }


def judge(arms: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "modulo" in arms and "managed" in arms:
        gains = [b["valid_auc"] - a["valid_auc"] for a, b in zip(arms["modulo"], arms["managed"], strict=True)]
        interval = t_interval(gains)
        ratios = [
            b["examples_per_s"] / a["examples_per_s"] for a, b in zip(arms["modulo"], arms["managed"], strict=True)
        ]
        out.update(
            {
                "managed_minus_modulo_auc_per_seed": gains,
                "managed_minus_modulo_auc_interval_95": interval,
                "managed_beats_modulo": at_least(interval, 0.0),
                "managed_over_modulo_throughput_per_seed": ratios,
                "managed_over_modulo_throughput_median": statistics.median(ratios),
            }
        )
    if "full" in arms and "managed" in arms:
        gaps = [f["valid_auc"] - m["valid_auc"] for f, m in zip(arms["full"], arms["managed"], strict=True)]
        out["full_minus_managed_auc_interval_95"] = t_interval(gaps)
    for name in [a for a in arms if a.startswith("managed_i")]:
        if "modulo" in arms:
            pairs = list(zip(arms["modulo"], arms[name], strict=True))
            out[f"{name}_minus_modulo_auc_interval_95"] = t_interval(
                [b["valid_auc"] - a["valid_auc"] for a, b in pairs]
            )
            ratios = [b["examples_per_s"] / a["examples_per_s"] for a, b in pairs]
            out[f"{name}_over_modulo_throughput_median"] = statistics.median(ratios)
    if "managed_keep" in arms and "managed" in arms:
        diffs = [k["valid_auc"] - m["valid_auc"] for m, k in zip(arms["managed"], arms["managed_keep"], strict=True)]
        out["keep_minus_reset_auc_interval_95"] = t_interval(diffs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "managed"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/managed_collisions.json"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--arms", default="full,modulo,managed,managed_keep")
    parser.add_argument("--scale", type=int, default=50, help="Criteo's cardinalities divided by this")
    parser.add_argument("--big", type=int, default=20_000, help="tables with more ids than this are shrunk")
    parser.add_argument("--compression", type=int, default=20, help="ids per row of a shrunk table")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--train-rows", type=int, default=400_000)
    parser.add_argument("--valid-rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--key", default="", help="write the results under this key of --out (other keys kept)")
    args = parser.parse_args()
    work = Path(args.work)
    card = cardinalities(args.scale)
    shrunk = [n // args.compression if n > args.big else n for n in card]
    full = write_job(work / "full.yaml", job(card, card, "full", args))
    data = prepare_data(
        load_config(str(full), [f"data.cache_dir={work / 'data'}"]).data, load_config(str(full)).embeddings
    )
    names = set(args.arms.split(",")) | {"full"}
    presets = {
        arm: write_job(work / f"{arm}.yaml", job(card, card if arm == "full" else shrunk, arm, args)) for arm in names
    }
    arms: dict[str, list[dict[str, Any]]] = {a: [] for a in args.arms.split(",")}
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        order = list(arms) if seed % 2 == 0 else list(reversed(arms))  # alternate, for the throughput ratio
        for arm in order:
            arms[arm].append(run(presets[arm], seed, data, work, args.nproc))
            print(arm, arms[arm][-1], flush=True)
    for runs in arms.values():
        runs.sort(key=lambda r: r["seed"])
    results = {
        "benchmark": "managed_collisions",
        "machine": {"cpu": cpu_model(), "ranks": args.nproc, "device": "cpu"},
        "setup": {
            "ids_per_feature": card,
            "rows_full": sum(card),
            "rows_shrunk": sum(shrunk),
            "shrunk_tables": [f"t{i}" for i, (a, b) in enumerate(zip(card, shrunk, strict=True)) if a != b],
            **{k: v for k, v in vars(args).items() if k not in ("work", "out")},
        },
        "arms": {
            name: {
                "valid_auc": statistics.fmean(r["valid_auc"] for r in runs),
                "valid_auc_std": statistics.stdev(r["valid_auc"] for r in runs) if len(runs) > 1 else None,
                "valid_ne": statistics.fmean(r["valid_ne"] for r in runs),
                "examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
                "runs": runs,
            }
            for name, runs in arms.items()
        },
        "verdict": judge(arms),
        "wall_s": time.perf_counter() - started,
    }
    if args.key:
        write_result_key(args.out, args.key, results)
    else:
        write_results(args.out, results)
    print(yaml.safe_dump(results["verdict"], sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
