"""The quality side of the Kunlun cost benchmark: Computation Skip and sliding-window attention at equal quality?

    .venv/bin/python benchmarks/kunlun_cost.py        # FLOPs of the variants (writes kunlun_cost.json)
    .venv/bin/python benchmarks/kunlun_quality.py     # trains them, fills auc / oracle_auc into it

Trains the four ``kunlun_synthetic`` variants (full attention without CompSkip, CompSkip, sliding-window
attention, both) on the same planted-truth sequence data for the same number of steps through
``recscale train ... --nproc 2``, and records each variant's validation AUC next to the oracle AUC. The
claim to check (papers.md §2.3): CompSkip (~ -40% FLOPs) and SWA (~ -30% FLOPs) keep the AUC gap to the
oracle within 0.1% of the full model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli_runs import ROOT, train

RESULTS = ROOT / "benchmarks/results/kunlun_cost.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--train-rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text())
    variants = results["preset"]["variants"]
    work = Path(args.work)
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        "data.synthetic.num_valid=20000",
        "trainer.batch_size=512",
        f"trainer.epochs={args.epochs}",
        "trainer.eval_every=0",
        "checkpoint.every_steps=0",
        "checkpoint.at_end=false",
        f"launch.run_root={work / 'runs'}",
        "metrics.progress_bar=never",
        "metrics.tensorboard=false",
    ]
    for name, variant in variants.items():
        sets = common + list(variant["overrides"])
        run_dir, summary = train("kunlun_synthetic", sets)
        final = summary["final_eval"]
        variant.update(
            auc=final["auc"],
            oracle_auc=final["oracle_auc"],
            auc_gap=final["auc_gap"],
            logloss=final["logloss"],
            examples_per_s=summary["throughput"]["examples_per_s"],
            run_dir=str(run_dir),
        )
        print(
            f"{name}: AUC {final['auc']:.4f} (oracle {final['oracle_auc']:.4f}) "
            f"{variant['model_flops']['train'] / 1e6:.2f} MFLOP/example",
            flush=True,
        )
    full_gap = variants["full"]["auc_gap"]
    results["auc"] = {k: v["auc"] for k, v in variants.items()}
    results["oracle_auc"] = {k: v["oracle_auc"] for k, v in variants.items()}
    results["equal_quality"] = {
        k: {"gap_minus_full_gap": v["auc_gap"] - full_gap, "within_0.1_percent": v["auc_gap"] - full_gap <= 0.001}
        for k, v in variants.items()
        if k != "full"
    }
    results["quality_note"] = (
        f"kunlun_synthetic variants trained on {args.train_rows} synthetic rows for {args.epochs} epochs on 2 CPU "
        "ranks; auc / oracle_auc per variant; equal quality = AUC gap to the oracle within 0.001 of the full model's"
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
