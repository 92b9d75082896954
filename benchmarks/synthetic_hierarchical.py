"""Gap to the oracle on planted-truth data with a hierarchical term: DCN-V2, Wukong, DCN-V2 with HiLoMoE.

    .venv/bin/python benchmarks/synthetic_hierarchical.py        # a few minutes on 2 CPU cores

The synthetic generator plants per-id effects, low-rank pairwise field interactions and a hierarchical
term (user clusters x item categories, ``data.synthetic.hierarchical_scale``), and knows every example's
true click probability, so each model's AUC is reported beside the oracle AUC. The three models train
on the same data, for the same number of steps, through ``recscale train ... --nproc 2``; HiLoMoE runs its
three stages inside that budget, at no more FLOPs per example than its backbone.

Writes ``benchmarks/results/synthetic_hierarchical.json``: per model ``auc``, ``oracle_auc``, the gap,
``logloss``, ``flops_per_example``, ``params`` and the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli_runs import ROOT, quiet, train
from results_io import write_results

MODELS = {"dcnv2": "quickstart", "wukong": "wukong_synthetic", "dcnv2_hilomoe": "dcnv2_hilomoe"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--train-rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/synthetic_hierarchical.json"))
    args = parser.parse_args()
    work = Path(args.work)
    batch = 1024
    steps = args.train_rows // batch * args.epochs
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        "data.synthetic.num_valid=50000",
        "data.synthetic.hierarchical_scale=0.6",
        f"trainer.batch_size={batch}",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
        *quiet(work / "runs"),
    ]
    per_model = {
        "dcnv2": [f"trainer.max_steps={steps}"],
        "wukong": [f"trainer.max_steps={steps}"],
        # three stages inside the same step budget: half backbone, a quarter experts, a quarter joint
        "dcnv2_hilomoe": [
            "trainer.max_steps=0",
            f"trainer.stages.0.steps={steps // 2}",
            f"trainer.stages.1.steps={steps // 4}",
            f"trainer.stages.2.steps={steps - steps // 2 - steps // 4}",
        ],
    }
    results = {}
    for name in args.models.split(","):
        sets = common + per_model[name]
        run_dir, summary = train(MODELS[name], sets)
        final = summary["final_eval"]
        results[name] = {
            "preset": MODELS[name],
            "auc": final["auc"],
            "oracle_auc": final["oracle_auc"],
            "auc_gap": final["auc_gap"],
            "logloss": final["logloss"],
            "oracle_logloss": final["oracle_logloss"],
            "flops_per_example": summary["flops_per_example"]["train"],
            "params": summary["params"]["dense"] + summary["params"]["embedding"],
            "params_dense": summary["params"]["dense"],
            "steps": summary["steps"],
            "checkpoint": str(sorted((run_dir / "checkpoints").glob("step_*"))[-1]),
            "run_dir": str(run_dir),
        }
        print(
            f"{name}: AUC {final['auc']:.4f} (oracle {final['oracle_auc']:.4f}, gap {final['auc_gap']:.4f}), "
            f"{summary['flops_per_example']['train'] / 1e6:.3f} MFLOP/example",
            flush=True,
        )
    if "dcnv2" in results and "dcnv2_hilomoe" in results:
        base, moe = results["dcnv2"], results["dcnv2_hilomoe"]
        results["hilomoe_vs_backbone"] = {
            "gap_closed": 1 - moe["auc_gap"] / base["auc_gap"],
            "flops_change_relative": moe["flops_per_example"] / base["flops_per_example"] - 1,
        }
    results["data"] = {
        "train_rows": args.train_rows,
        "valid_rows": 50000,
        "hierarchical_scale": 0.6,
        "epochs": args.epochs,
    }
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
