"""Gated cross-attention vs a parameter-matched wider baseline on two-domain synthetic sequence data.

    .venv/bin/python benchmarks/gca.py           # 2 variants x 4 seeds on 2 CPU ranks (~13 min)

Both variants of the ``gca_two_domain`` preset train on the same planted-truth data (two domains, one
event sequence each, and a cross-domain term in the label: the candidate's category x the user's
domain-B history, ``data.synthetic.cross_domain_scale``) for the same steps: ``gca`` (a gated
cross-attention block where each domain's sequence queries the other's) and ``wider_baseline`` (no
block; its feed-forward widened until its parameter count matches). Per seed: validation AUC, the
oracle AUC, and for ``gca`` the orthogonality diagnostic mean |cos(X, X')| per domain (the
paper's measure). The summary gives mean +- sample standard deviation over seeds, the gap to the oracle, and the
per-seed paired difference (the two variants of one seed read the same data in the same order) with
its t statistic. Writes ``benchmarks/results/gca.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from cli_runs import ROOT, quiet, train
from results_io import write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--train-rows", type=int, default=40_000)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--cross-domain-scale", type=float, default=1.0, help="data.synthetic.cross_domain_scale")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gca.json"))
    args = parser.parse_args()
    work = Path(args.work)
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        f"data.synthetic.cross_domain_scale={args.cross_domain_scale}",
        "data.synthetic.num_valid=10000",
        "trainer.batch_size=512",
        "trainer.epochs=2",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
        "checkpoint.at_end=false",
        *quiet(work / "runs"),
    ]
    started = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {"gca": [], "wider_baseline": []}
    for variant in runs:
        for seed in (int(s) for s in args.seeds.split(",")):
            sets = [*common, f"model.gca.variant={variant}", f"seed={seed}", f"data.reader.seed={seed}"]
            run_dir, summary = train("gca_two_domain", sets)
            final = summary["final_eval"]
            record = {
                "seed": seed,
                "auc": final["auc"],
                "oracle_auc": final["oracle_auc"],
                "auc_gap": final["auc_gap"],
                "logloss": final["logloss"],
                "params_dense": summary["params"]["dense"],
                "flops_per_example": summary["flops_per_example"]["train"],
            }
            record |= {k: v for k, v in final.items() if k.startswith("gca/")}
            runs[variant].append(record)
            print(f"{variant} seed {seed}: AUC {final['auc']:.4f} (oracle {final['oracle_auc']:.4f})", flush=True)
    summary_stats = {}
    for variant, records in runs.items():
        aucs = [r["auc"] for r in records]
        summary_stats[variant] = {
            "auc_mean": statistics.fmean(aucs),
            "auc_stdev": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "auc_gap_mean": statistics.fmean(r["auc_gap"] for r in records),
            "params_dense": records[0]["params_dense"],
            "flops_per_example": records[0]["flops_per_example"],
        }
        for key in sorted({k for r in records for k in r if k.startswith("gca/")}):
            summary_stats[variant][f"{key}_mean"] = statistics.fmean(r[key] for r in records if key in r)
    paired = [g["auc"] - w["auc"] for g, w in zip(runs["gca"], runs["wider_baseline"])]
    spread = statistics.stdev(paired) if len(paired) > 1 else 0.0
    result = {
        "preset": "gca_two_domain",
        "data": {
            "train_rows": args.train_rows,
            "valid_rows": 10000,
            "epochs": 2,
            "cross_domain_scale": args.cross_domain_scale,
        },
        "runs": runs,
        "summary": summary_stats,
        "gca_minus_wider_auc": summary_stats["gca"]["auc_mean"] - summary_stats["wider_baseline"]["auc_mean"],
        "paired_difference": {
            "per_seed": paired,
            "mean": statistics.fmean(paired),
            "stdev": spread,
            "t": statistics.fmean(paired) / (spread / math.sqrt(len(paired))) if spread > 0 else None,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
