"""Quality on real data: DCN-V2, Wukong and DCN-V2 with HiLoMoE on Frappe_x1 (validation split).

    .venv/bin/python benchmarks/frappe_quality.py          # ~10 minutes on 2 CPU cores

Converts ``../shared/data/frappe_x1`` once (into --work), trains each model with the BARS / FuxiCTR recipe
of the ``frappe`` preset through the real launch path (``recscale train ... --nproc 2``), and writes
``benchmarks/results/frappe_quality.json``: per model the validation AUC and logloss, FLOPs per example,
parameters, epochs run and the checkpoint (re-evaluate it on other data with ``recscale eval``).

Published Frappe_x1 *test* AUC (BARS): DCNv2 0.9845, DeepFM 0.9842; Wukong paper: 0.9868. Targets here:
DCN-V2 >= 0.984, Wukong >= 0.985 (validation AUC), HiLoMoE >= its backbone + 0.1% at fewer FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cli_runs import ROOT, recscale, train

DATA = ROOT.parent / "shared" / "data" / "frappe_x1"
MODELS = {
    "dcnv2": "frappe",
    "wukong": "wukong_frappe_cpu",
    "dcnv2_hilomoe": "dcnv2_hilomoe_frappe",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/frappe_quality.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(
            f"{DATA} is not there: this benchmark needs the Frappe_x1 files (see ../shared/data/README.md)"
        )
    work = Path(args.work)
    data = work / "frappe_x1"
    if not (data / "schema.json").is_file():
        recscale(
            "data",
            "convert",
            "csv",
            str(DATA / "train.csv"),
            "--valid",
            str(DATA / "valid.csv"),
            "--config",
            "frappe",
            "--out",
            str(data),
        )
    results = {}
    for name in args.models.split(","):
        preset = MODELS[name]
        sets = [
            f"data.train_path={data / 'train'}",
            f"data.valid_path={data / 'valid'}",
            f"launch.run_root={work / 'runs'}",
            "metrics.progress_bar=never",
        ]
        run_dir, summary = train(preset, sets)
        final = summary["final_eval"]
        best = run_dir / "checkpoints" / "best"
        results[name] = {
            "preset": preset,
            "valid_auc": final["auc"],
            "logloss": final["logloss"],
            "flops_per_example": summary["flops_per_example"]["train"],
            "flops_per_example_forward": summary["flops_per_example"]["forward"],
            "params": summary["params"]["dense"] + summary["params"]["embedding"],
            "params_dense": summary["params"]["dense"],
            "steps": summary["steps"],
            "best_step": final.get("restored_from_step", summary["steps"]),
            "examples_per_s": summary["throughput"]["examples_per_s"],
            "checkpoint": str(best if best.is_dir() else sorted((run_dir / "checkpoints").glob("step_*"))[-1]),
            "run_dir": str(run_dir),
        }
        print(
            f"{name}: valid AUC {final['auc']:.4f}, logloss {final['logloss']:.4f}, "
            f"{summary['flops_per_example']['train'] / 1e6:.2f} MFLOP/example",
            flush=True,
        )
    if "dcnv2" in results and "dcnv2_hilomoe" in results:
        base, moe = results["dcnv2"], results["dcnv2_hilomoe"]
        results["hilomoe_vs_backbone"] = {
            "auc_gain_relative": moe["valid_auc"] / base["valid_auc"] - 1,
            "flops_change_relative": moe["flops_per_example"] / base["flops_per_example"] - 1,
        }
    results["targets"] = {"dcnv2": 0.984, "wukong": 0.985, "hilomoe_auc_gain_relative": 0.001}
    results["machine"] = {"cores": os.cpu_count(), "note": "2 ranks x 1 thread, CPU, gloo"}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
