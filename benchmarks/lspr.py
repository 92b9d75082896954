"""LSPR against no regularisation and the SCR baseline on Frappe_x1 (validation NE, paired by seed).

    .venv/bin/python benchmarks/lspr.py --epochs 1 --batch-size 1024      # every arm, seeds 0,1,2: ~21 min
    .venv/bin/python benchmarks/lspr.py --arms none --seeds 0 --epochs 1   # time one run
    .venv/bin/python benchmarks/lspr.py --pick --epochs 1 --batch-size 1024  # the small grid on seed 0 first

Converts ``../shared/data/frappe_x1`` once (into --work) and trains the ``frappe`` preset (DCN-V2, the BARS
recipe) through ``recscale train`` on one process, for the same number of epochs in every arm (the
protocol's learning-rate drop and best-weights restore stay on; its early stop rarely fires in so few
epochs). Arms: ``none``; ``scr`` (consistency weight μ); ``lspr`` (λ, σ_rel). ``--pick`` first trains
the grid λ ∈ {.25, .5, 1} × σ_rel ∈ {.01, .03, .1} and μ ∈ {.1, 1} on seed 0 only and freezes the best
(lowest validation NE) for the paired seeds; the picking seed is then reused in the comparison, which
favours the picked arms on that seed (the JSON says so).

Targets (written to ``benchmarks/results/lspr.json``): LSPR's mean validation NE is at least 0.1% relative
better than ``none`` with every seed in the same direction, and LSPR is not worse than SCR by more than
one seed standard deviation (the two arms' pooled NE std over seeds). The 95% Student-t interval of the
paired relative gain is reported beside them (``verdicts.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cli_runs import ROOT, quiet, recscale, train
from results_io import write_results
from verdicts import at_least, t_interval

from recscale.trainer.peaks import cpu_model

DATA = ROOT.parent / "shared" / "data" / "frappe_x1"
TARGET_GAIN = 0.001
"""LSPR's validation NE at least 0.1% (relative) below the unregularised model's."""
LAMBDAS, SIGMAS, MUS = (0.25, 0.5, 1.0), (0.01, 0.03, 0.1), (0.1, 1.0)


def arm_overrides(kind: str, weight: float = 0.5, sigma_rel: float = 0.03, mu: float = 1.0) -> list[str]:
    """``--set`` overrides of one arm."""
    key = "model.perturbation"
    if kind == "none":
        return [f"{key}.kind=none"]
    if kind == "scr":
        return [f"{key}.kind=scr", f"{key}.consistency_weight={mu}", f"{key}.sigma_rel={sigma_rel}"]
    return [f"{key}.kind=lspr", f"{key}.weight={weight}", f"{key}.sigma_rel={sigma_rel}"]


def run_once(overrides: list[str], seed: int, epochs: int, batch_size: int, data: Path, work: Path) -> dict[str, Any]:
    """Train Frappe once on one process; the final (best-restored) validation metrics and the cost."""
    sets = [
        f"seed={seed}",
        f"trainer.epochs={epochs}",
        f"trainer.batch_size={batch_size}",
        f"data.train_path={data / 'train'}",
        f"data.valid_path={data / 'valid'}",
        *quiet(work / "runs"),
        *overrides,
    ]
    started = time.perf_counter()
    run_dir, summary = train("frappe", sets, nproc=1)
    final = summary["final_eval"]
    return {
        "seed": seed,
        "valid_ne": final["ne"],
        "valid_auc": final["auc"],
        "valid_logloss": final["logloss"],
        "steps": summary["steps"],
        "best_step": final.get("restored_from_step", summary["steps"]),
        "flops_per_example_train": summary["flops_per_example"]["train"],
        "examples_per_s": summary["throughput"]["examples_per_s"],
        "wall_s": time.perf_counter() - started,
        "run_dir": str(run_dir),
    }


def pick(epochs: int, batch_size: int, data: Path, work: Path) -> dict[str, Any]:
    """The grid on seed 0: every LSPR (λ, σ_rel) and SCR μ (at the default σ_rel); the best NE of each kind."""
    lspr = {
        f"weight={w},sigma_rel={s}": run_once(arm_overrides("lspr", w, s), 0, epochs, batch_size, data, work)
        for w in LAMBDAS
        for s in SIGMAS
    }
    scr = {f"mu={m}": run_once(arm_overrides("scr", mu=m), 0, epochs, batch_size, data, work) for m in MUS}
    best_lspr = min(lspr, key=lambda k: lspr[k]["valid_ne"])
    best_scr = min(scr, key=lambda k: scr[k]["valid_ne"])
    return {"seed": 0, "lspr": lspr, "scr": scr, "best_lspr": best_lspr, "best_scr": best_scr}


def parse_choice(text: str) -> dict[str, float]:
    """``weight=0.5,sigma_rel=0.03`` -> ``{"weight": 0.5, "sigma_rel": 0.03}``."""
    return {k: float(v) for k, v in (part.split("=") for part in text.split(","))}


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The two targets, paired by seed."""
    arms = results["arms"]
    ne = {name: [r["valid_ne"] for r in arm["runs"]] for name, arm in arms.items()}
    gains = [(base - lspr) / base for base, lspr in zip(ne["none"], ne["lspr"])]
    mean_gain = statistics.fmean(gains)
    same_direction = all(g > 0 for g in gains)
    interval = t_interval(gains)
    pooled_std = math.sqrt((statistics.variance(ne["lspr"]) + statistics.variance(ne["scr"])) / 2)
    lspr_minus_scr = statistics.fmean(ne["lspr"]) - statistics.fmean(ne["scr"])
    scr_gains = [(base - scr) / base for base, scr in zip(ne["none"], ne["scr"])]
    return {
        "lspr_ne_gain_relative_per_seed": gains,
        "lspr_ne_gain_relative_mean": mean_gain,
        "lspr_ne_gain_relative_interval_95": interval,
        "lspr_gain_interval_verdict": at_least(interval, TARGET_GAIN),
        "scr_ne_gain_relative_per_seed": scr_gains,
        "lspr_vs_none": "met" if mean_gain >= TARGET_GAIN and same_direction else "not_met",
        "every_seed_same_direction": same_direction,
        "lspr_minus_scr_ne": lspr_minus_scr,
        "pooled_seed_std_ne": pooled_std,
        "lspr_vs_scr": "met" if lspr_minus_scr <= pooled_std else "not_met",
    }


def summarize(overrides: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and seed std of the validation NE / AUC, the cost, and every run."""
    ne = [r["valid_ne"] for r in runs]
    return {
        "overrides": overrides,
        "valid_ne": statistics.fmean(ne),
        "valid_ne_std": statistics.stdev(ne) if len(ne) > 1 else None,
        "valid_auc": statistics.fmean(r["valid_auc"] for r in runs),
        "flops_per_example_train": runs[0]["flops_per_example_train"],
        "examples_per_s": statistics.fmean(r["examples_per_s"] for r in runs),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/lspr.json"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arms", default="none,scr,lspr")
    parser.add_argument("--batch-size", type=int, default=4096, help="the same in every arm")
    parser.add_argument("--pick", action="store_true", help="pick λ, σ_rel and μ on seed 0 first")
    parser.add_argument("--lspr", default="weight=0.5,sigma_rel=0.03", help="the LSPR arm without --pick")
    parser.add_argument("--scr", default="mu=1.0,sigma_rel=0.03", help="the SCR arm without --pick")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is not there: this benchmark needs Frappe_x1 (see ../shared/data/README.md)")
    work = Path(args.work)
    data = work / "frappe_x1"
    if not (data / "schema.json").is_file():
        csvs = (str(DATA / "train.csv"), "--valid", str(DATA / "valid.csv"))
        recscale("data", "convert", "csv", *csvs, "--config", "frappe", "--out", str(data))
    started = time.perf_counter()
    results: dict[str, Any] = {"epochs": args.epochs, "batch_size": args.batch_size}
    lspr_choice, scr_choice = parse_choice(args.lspr), parse_choice(args.scr)
    if args.pick:
        grid = pick(args.epochs, args.batch_size, data, work)
        results["pick"] = grid
        lspr_choice, scr_choice = parse_choice(grid["best_lspr"]), parse_choice(grid["best_scr"])
        scr_choice.setdefault("sigma_rel", 0.03)
    overrides = {
        "none": arm_overrides("none"),
        "scr": arm_overrides("scr", mu=scr_choice["mu"], sigma_rel=scr_choice["sigma_rel"]),
        "lspr": arm_overrides("lspr", lspr_choice["weight"], lspr_choice["sigma_rel"]),
    }
    seeds = [int(x) for x in args.seeds.split(",")]
    results["arms"] = {}
    for name in args.arms.split(","):
        runs = [run_once(overrides[name], seed, args.epochs, args.batch_size, data, work) for seed in seeds]
        results["arms"][name] = summarize(overrides[name], runs)
        r = results["arms"][name]
        print(f"{name}: valid NE {r['valid_ne']:.5f} (AUC {r['valid_auc']:.5f}) over seeds {seeds}", flush=True)
    if set(results["arms"]) == {"none", "scr", "lspr"} and len(seeds) > 1:
        results["verdict"] = judge(results)
        print(json.dumps({k: v for k, v in results["verdict"].items() if "interval" not in k}, indent=2))
    results["targets"] = {
        "lspr_ne_gain_relative": TARGET_GAIN,
        "every_seed_same_direction": True,
        "lspr_minus_scr_ne_at_most": "one pooled seed std",
    }
    tuned = (
        "λ, σ_rel and μ picked on seed 0 of the same validation split, which is also a compared seed"
        if args.pick
        else f"untuned settings: lspr {args.lspr}, scr {args.scr}"
    )
    results["protocol"] = (
        f"frappe preset (DCN-V2, BARS recipe) at batch {args.batch_size}, {args.epochs} epoch(s) in every arm, "
        f"1 process, validation NE paired by seed ({tuned})"
    )
    results["wall_s"] = time.perf_counter() - started
    results["machine"] = {"cores": os.cpu_count(), "cpu": cpu_model(), "note": "1 rank x 1 thread, CPU"}
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
