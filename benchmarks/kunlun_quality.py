"""The quality side of the Kunlun cost benchmark: Computation Skip and sliding-window attention at equal quality?

    .venv/bin/python benchmarks/kunlun_cost.py        # FLOPs of the variants (writes kunlun_cost.json)
    .venv/bin/python benchmarks/kunlun_quality.py     # full + CompSkip, seed 0: fills auc / oracle_auc (~14 min)
    .venv/bin/python benchmarks/kunlun_quality.py --seeds 1            # one more seed, pooled with the others
    .venv/bin/python benchmarks/kunlun_quality.py --variants swa       # another variant against the full runs

Trains ``kunlun_synthetic`` variants (default: full attention without CompSkip, and CompSkip; also
``swa`` and ``compskip_swa`` with ``--variants``) on the same planted-truth sequence data for the same
number of steps (180,000 rows x 2 epochs: at 60,000 rows every variant is far from converged and
CompSkip converges later, see docs/models/kunlun.md) through ``recscale train ... --nproc 2``, once per
seed, and records each variant's
validation AUC (mean and sample standard deviation over seeds) next to the oracle AUC. The claim to
check (the Kunlun paper's efficiency claims): CompSkip (~ -40% FLOPs) and SWA (~ -30% FLOPs) keep the
AUC gap to the oracle within 0.1% (0.001 AUC) of the full model's. A variant's seed ``s`` reads the
data in the same order as the full model's seed ``s``, so the per-seed paired difference is reported
with its t statistic: a mean difference smaller than its seed noise is not evidence either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cli_runs import ROOT, quiet, train
from results_io import write_results
from verdicts import at_most, t_interval

RESULTS = ROOT / "benchmarks/results/kunlun_cost.json"
EQUAL = 0.001
"""Equal quality: AUC gap to the oracle at most this much above the full model's."""


def paired_verdict(paired: list[float]) -> dict[str, Any]:
    """Equal quality from the per-seed paired differences (variant's oracle gap − the full model's).

    ``within_0.1_percent`` reads the mean alone; ``confirmed`` also asks whether the seeds resolve it,
    from the 95% Student-t interval of the mean difference (``verdicts.py``): ``equal`` when the whole
    interval is ≤ 0.001, ``worse`` when it is all > 0.001, else ``unresolved`` (the seed noise is larger
    than the target; always so with one seed).
    """
    interval = t_interval(paired)
    confirmed = {"met": "equal", "not_met": "worse", "unresolved": "unresolved"}[at_most(interval, EQUAL)]
    stderr = interval["stderr"]
    return {
        "gap_minus_full_gap": interval["mean"],
        "gap_minus_full_gap_per_seed": paired,
        "gap_minus_full_gap_stdev": interval["stdev"] if interval["stdev"] is not None else 0.0,
        "gap_minus_full_gap_stderr": stderr,
        "gap_minus_full_gap_interval_95": [interval["low"], interval["high"]] if stderr is not None else None,
        "t_quantile": interval["t_quantile"],
        "t": interval["mean"] / stderr if stderr else None,
        "within_0.1_percent": interval["mean"] <= EQUAL,
        "confirmed": confirmed,
    }


QUALITY_KEYS = ("auc", "auc_stdev", "auc_gap", "oracle_auc", "seeds", "runs")
"""What this script writes into each trained ``preset.variants`` entry."""


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks"))
    parser.add_argument("--train-rows", type=int, default=180_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0", help="seeds to train (runs of other seeds in the JSON are kept)")
    parser.add_argument("--results", default=str(RESULTS), help="the kunlun_cost.json to read and fill in")
    parser.add_argument("--variants", default="full,compskip", help="comma list of preset.variants names")
    args = parser.parse_args()
    results_path = Path(args.results)
    results = json.loads(results_path.read_text())
    variants = results["preset"]["variants"]
    names = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    have_full = {r["seed"] for r in variants["full"].get("runs", [])}
    if "full" not in names and not set(seeds) <= have_full:
        raise SystemExit(f"--variants: the full model is the reference; include 'full' (runs for seeds {have_full})")
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
        *quiet(work / "runs"),
    ]
    started = time.perf_counter()
    for name in names:  # runs of other seeds already in the JSON (same command) are kept and pooled
        variants[name]["runs"] = [r for r in variants[name].get("runs", []) if r["seed"] not in seeds]
    for seed in seeds:  # seed-major: an interrupted run still has paired results
        for name in names:
            variant = variants[name]
            sets = [*common, *variant["overrides"], f"seed={seed}", f"data.reader.seed={seed}"]
            _, summary = train("kunlun_synthetic", sets)
            final = summary["final_eval"]
            variant["runs"].append(
                {
                    "seed": seed,
                    "auc": final["auc"],
                    "auc_gap": final["auc_gap"],
                    "logloss": final["logloss"],
                }
            )
            variant["oracle_auc"] = final["oracle_auc"]
            print(f"{name} seed {seed}: AUC {final['auc']:.4f} (oracle {final['oracle_auc']:.4f})", flush=True)
    for name in names:
        variant = variants[name]
        auc, gap = _stats([r["auc"] for r in variant["runs"]]), _stats([r["auc_gap"] for r in variant["runs"]])
        variant["runs"].sort(key=lambda r: r["seed"])
        variant.update(
            auc=auc["mean"], auc_stdev=auc["stdev"], auc_gap=gap["mean"], seeds=[r["seed"] for r in variant["runs"]]
        )
    # re-read: the FLOPs side may have been recounted (kunlun_cost.py) while this ran; keep it
    results = json.loads(results_path.read_text())
    for name in names:
        target = results["preset"]["variants"][name]
        for stale in ("logloss", "examples_per_s", "run_dir"):  # single-run fields of older versions
            target.pop(stale, None)
        target.update({k: variants[name][k] for k in QUALITY_KEYS})
    variants = results["preset"]["variants"]
    full = variants["full"]
    results["auc"] = {k: v["auc"] for k, v in variants.items() if v.get("auc") is not None}
    results["auc_stdev"] = {k: v["auc_stdev"] for k, v in variants.items() if len(v.get("runs", [])) > 1}
    results["oracle_auc"] = {k: v["oracle_auc"] for k, v in variants.items() if v.get("oracle_auc") is not None}
    equal = dict(results.get("equal_quality") or {})  # variants not trained now keep their earlier result
    full_gap = {r["seed"]: r["auc_gap"] for r in full["runs"]}
    for name in (n for n in names if n != "full"):
        paired = [r["auc_gap"] - full_gap[r["seed"]] for r in variants[name]["runs"] if r["seed"] in full_gap]
        equal[name] = paired_verdict(paired)
    results["equal_quality"] = equal
    results["quality_note"] = (
        f"kunlun_synthetic variants trained on {args.train_rows} synthetic rows x {args.epochs} epochs (batch 512, "
        "2 CPU ranks); auc = mean over the seeds in preset.variants.*.runs (auc_stdev: sample std), oracle_auc per "
        f"variant; equal quality = mean paired AUC gap to the oracle within {EQUAL} of the full model's; the last "
        f"invocation trained {names} for seeds {seeds} in {time.perf_counter() - started:.0f} s"
    )
    write_results(results_path, results)
    print(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
