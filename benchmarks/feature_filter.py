"""Lattice's Filter on planted useless features: does it drop them and keep every useful one?

    .venv/bin/python benchmarks/feature_filter.py            # 5 seeds on 1 CPU rank (~7 min on 2 cores)

The data (``planted_config``): three tasks, 22 sparse features and 2 dense columns. 10 sparse features and
both dense columns are planted useless (``data.synthetic.useless_features``: drawn, but in no term of any
logit); the id terms of click and like read user, item, s0 and their own c*/l* features, and purchase's
reads only its own p0, p1, p2 (``data.synthetic.task_features``). Every seed draws its own planted truth.
The model trains with equal task weights; the weighted-sum baseline ranks with business weights click 1,
like 0.5, purchase 0.1 (``--weights``): purchase is the minority task.

Per seed: train, then ``recscale features select`` with the budget equal to the number of useful
features (the acceptance test: at least 80% of the useless features dropped and every useful one kept),
then, on the same importances, a tighter budget where the weighted-sum baseline has to choose between
the minority task's features and the others; both tight selections are retrained (on the same rows,
``selected_config``) and purchase's validation AUC compared. Means come with 95% Student-t intervals
(``verdicts.py``). Writes the key ``filter`` of ``benchmarks/results/multitask.json`` (other keys kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cli_runs import ROOT, quiet, recscale, train
from results_io import cpu_model, write_result_key
from verdicts import at_least, t_interval

from recscale.configs import load_config
from recscale.data.prepare import prepare_data
from recscale.launch.features_cli import selected_config, write_config
from recscale.trainer.feature_filter import apply_floor, filter_select, weighted_top

SHARED = ["user", "item", "s0"]
CLICK = ["c0", "c1", "c2", "c3"]
LIKE = ["l0", "l1"]
PURCHASE = ["p0", "p1", "p2"]
USELESS_SPARSE = [f"z{i}" for i in range(10)]
USEFUL_DENSE, USELESS_DENSE = [], ["dz0", "dz1"]
USELESS = [*USELESS_SPARSE, *USELESS_DENSE]
WEIGHTS = {"click": 1.0, "like": 0.5, "purchase": 0.1}


def planted_config(seed: int, train_rows: int, valid_rows: int, work: Path) -> dict[str, Any]:
    """The benchmark's job (module docstring) as a plain config dict."""
    sparse = [*SHARED, *CLICK, *LIKE, *PURCHASE, *USELESS_SPARSE]
    return {
        "name": f"feature_filter_s{seed}",
        "seed": seed,
        "data": {
            "source": "synthetic",
            "cache_dir": str(work / "cache"),
            "features": {
                "dense": [*USEFUL_DENSE, *USELESS_DENSE],
                "sparse": [{"name": n, "table": f"t_{n}"} for n in sparse],
                "oracle": "true_prob",
            },
            "synthetic": {
                "num_train": train_rows,
                "num_valid": valid_rows,
                "seed": 1000 + seed,
                "click_rate": 0.15,
                "zipf_exponent": 0.5,
                "id_effect_scale": 0.7,
                "interaction_scale": 0.0,
                "dense_scale": 0.5,
                "task_correlation": 0.5,
                "useless_features": [*USELESS_SPARSE, *USELESS_DENSE],
                "task_features": {
                    "click": [*SHARED, *CLICK],
                    "like": [*SHARED, "c0", "c1", *LIKE],
                    "purchase": PURCHASE,
                },
            },
            "reader": {"seed": seed, "shuffle_buffer_rows": 16384},
        },
        "embeddings": {"dim": 8, "tables": [{"name": f"t_{n}", "num_embeddings": 60} for n in sparse]},
        "model": {
            "arch": "dcnv2",
            "dense_arch": [],
            "over_arch": [64, 32],
            "dcnv2": {"num_cross_layers": 2, "low_rank": 16},
            "tasks": [{"name": t, "weight": 1.0} for t in WEIGHTS],
        },
        "sharding": {"dense": "ddp"},
        "optimizer": {"dense": {"name": "adam", "lr": 0.003}, "sparse": {"name": "rowwise_adagrad", "lr": 0.05}},
        "trainer": {"batch_size": 512, "epochs": 2, "eval_every": 0, "log_every": 50, "device": "cpu"},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
    }


def selections(result: dict[str, Any], floor: float, budget: int, seed: int) -> dict[str, list[str]]:
    """The Filter's and the weighted sum's features at ``budget`` from a ``features select`` JSON's means."""
    names = list(result["importance"])
    mean = np.array([[result["importance"][n][t]["mean"] for t in result["tasks"]] for n in names])
    F = apply_floor(np.clip(mean, 0.0, None), floor)
    return {
        "filter": [names[i] for i in filter_select(F, budget, seed)],
        "weighted_sum": [names[i] for i in weighted_top(F, list(WEIGHTS.values()), budget)],
    }


def counts(kept: list[str]) -> dict[str, Any]:
    useful, useless = [*SHARED, *CLICK, *LIKE, *PURCHASE, *USEFUL_DENSE], [*USELESS_SPARSE, *USELESS_DENSE]
    return {
        "useless_removed": len(set(useless) - set(kept)),
        "useful_kept": len(set(useful) & set(kept)),
        "useless_kept": sorted(set(useless) & set(kept)),
        "useful_dropped": sorted(set(useful) - set(kept)),
        "met": len(set(useless) - set(kept)) >= 0.8 * len(useless) and set(useful) <= set(kept),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "feature_filter"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--train-rows", type=int, default=40_000)
    parser.add_argument("--valid-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor", type=float, default=0.01, help="the --floor of the second variant")
    parser.add_argument("--tight-budget", type=int, default=8, help="budget of the retrained comparison")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multitask.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    budget = len(SHARED + CLICK + LIKE + PURCHASE + USEFUL_DENSE)
    variants = {"clip_at_0": 0.0, f"floor_{args.floor:g}": args.floor}
    started = time.perf_counter()
    per_seed = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = work / f"planted_s{seed}.yaml"
        config.write_text(yaml.safe_dump(planted_config(seed, args.train_rows, args.valid_rows, work), sort_keys=False))
        t0 = time.perf_counter()
        run_dir, summary = train(str(config), quiet(work / "runs"), nproc=1)
        train_s = time.perf_counter() - t0
        out = run_dir / "filter.json"
        t0 = time.perf_counter()
        recscale("features", "select", str(run_dir), "--budget", str(budget), "--repeats", str(args.repeats),
                 "--seed", str(seed), "--floor", str(args.floor), "--json", str(out),
                 "--weights", ",".join(f"{t}={w}" for t, w in WEIGHTS.items()))  # fmt: skip
        select_s = time.perf_counter() - t0
        result = json.loads(out.read_text())
        record: dict[str, Any] = {
            "seed": seed,
            "run_auc": {t: summary["final_eval"][f"auc/{t}"] for t in WEIGHTS},
            "importance_mean": {
                n: {t: round(v["mean"], 6) for t, v in result["importance"][n].items()} for n in result["importance"]
            },
            "fronts_with_floor": result["fronts"],
            "seconds": {"train": round(train_s, 1), "select": round(select_s, 1)},
        }
        line = f"seed {seed}:"
        for name, floor in variants.items():
            chosen = selections(result, floor, budget, seed)
            record[name] = {method: {"kept": kept, **counts(kept)} for method, kept in chosen.items()}
            f = record[name]["filter"]
            line += f" {name}: filter removed {f['useless_removed']}/{len(USELESS)}, kept {f['useful_kept']}/{budget};"
        assert result["filter"]["kept"] == record[f"floor_{args.floor:g}"]["filter"]["kept"]  # the CLI's own choice
        tight = selections(result, args.floor, args.tight_budget, seed)
        record["tight"] = {
            m: {"kept": k, "purchase_features": sorted(set(k) & set(PURCHASE))} for m, k in tight.items()
        }
        if not args.no_retrain:
            cfg = load_config(str(config))
            paths = prepare_data(cfg.data, cfg.embeddings)
            for method, keep in tight.items():
                path = work / f"selected_s{seed}_{method}.yaml"
                write_config(selected_config(cfg, set(keep), (str(paths.train), str(paths.valid))), path)
                _, retrained = train(str(path), quiet(work / "runs"), nproc=1)
                record["tight"][method]["auc"] = {t: retrained["final_eval"][f"auc/{t}"] for t in WEIGHTS}
            f_auc, w_auc = (record["tight"][m]["auc"]["purchase"] for m in ("filter", "weighted_sum"))
            line += f" budget {args.tight_budget}: purchase AUC filter {f_auc:.4f} vs weighted sum {w_auc:.4f}"
        per_seed.append(record)
        print(line, flush=True)
    summary_block: dict[str, Any] = {}
    for name in variants:
        for method in ("filter", "weighted_sum"):
            rows = [r[name][method] for r in per_seed]
            summary_block[f"{name}/{method}"] = {
                "useless_removed_fraction": t_interval([r["useless_removed"] / len(USELESS) for r in rows]),
                "useful_kept_fraction": t_interval([r["useful_kept"] / budget for r in rows]),
                "acceptance_met_in_every_seed": all(r["met"] for r in rows),
                "seeds_met": sum(r["met"] for r in rows),
            }
    if not args.no_retrain:
        auc = {m: [r["tight"][m]["auc"]["purchase"] for r in per_seed] for m in ("filter", "weighted_sum")}
        diffs = [a - b for a, b in zip(auc["filter"], auc["weighted_sum"])]
        summary_block["tight_purchase_auc"] = {
            "filter": t_interval(auc["filter"]),
            "weighted_sum": t_interval(auc["weighted_sum"]),
            "filter_minus_weighted_sum": t_interval(diffs),
            "filter_better_verdict": at_least(t_interval(diffs), 0.0),
        }
    block = {
        "what": "Lattice Filter (recscale features select) on planted useless features; benchmarks/feature_filter.py",
        "acceptance": "the Filter at budget = number of useful features removes >= 80% of the useless ones and keeps "
        "every useful one, in every seed",
        "machine": {"cpu": cpu_model(), "ranks": 1, "threads_per_rank": 1, "device": "cpu"},
        "data": {
            "tasks": WEIGHTS,
            "useful": [*SHARED, *CLICK, *LIKE, *PURCHASE, *USEFUL_DENSE],
            "useless": USELESS,
            "task_features": planted_config(0, 0, 0, work)["data"]["synthetic"]["task_features"],
            "train_rows": args.train_rows,
            "valid_rows": args.valid_rows,
            "epochs": 2,
        },
        "selection": {
            "budget": budget,
            "tight_budget": args.tight_budget,
            "repeats": args.repeats,
            "variants": variants,
        },
        "per_seed": per_seed,
        "summary": summary_block,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_path = Path(args.out)
    write_result_key(out_path, "filter", block)
    for key, value in summary_block.items():
        if "/" in key:
            print(f"{key}: met in {value['seeds_met']}/{len(per_seed)} seeds")
    print(f"wrote {out_path} (key 'filter')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
