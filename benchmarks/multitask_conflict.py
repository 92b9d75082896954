"""Shared-bottom, MMoE and PLE as the two tasks' truths drift apart (MMoE paper's synthetic study, on CTR data).

    .venv/bin/python benchmarks/multitask_conflict.py                   # rho 0.9, 0.5, 0 x 3 arms x 3 seeds
    .venv/bin/python benchmarks/multitask_conflict.py --rhos 0 --epochs 1 --train-rows 1000000 --key conflict_1m_rows
    .venv/bin/python benchmarks/multitask_conflict.py --rhos 0 --epochs 1 --train-rows 1000000 \
        --arms mmoe_interaction,ple_interaction --shared-bottom-from conflict_1m_rows --key conflict_1m_rows_interaction

Ma et al. (KDD 2018) show on synthetic regression tasks that the gain of gated experts over a shared bottom
grows as the tasks' correlation falls. This benchmark asks the same question of recscale's models on the
``multitask_synthetic`` planted-truth generator, changed so that the correlation is one knob:

- both tasks are labelled on every row (``purchase`` is no longer observed only after a click: the sparse
  conditional task is a different question, answered by the ``architectures`` part of ``multitask.py``);
- the per-id effects of the two tasks correlate by ``rho`` (``task_correlation``), and so do their pairwise
  field interactions: a shared interaction term of scale ``s * sqrt(rho)`` plus each task's own of scale
  ``s * sqrt(1 - rho)`` (``interaction_scale``, ``task_interaction_scale``), s = 0.8, so the pair terms of
  the two tasks correlate by ``rho`` too;
- the hierarchical, dense and domain terms stay shared, and each task keeps its own domain shift
  (``task_domain_scale`` 0.4), as in the preset.

The models and their sizes are the preset's (DCN-V2 bottom, the preset's ``model.multitask`` experts and towers);
the ``*_interaction`` arms put the experts on the cross output in place of the shared deep MLP
(``model.multitask.expert_input: interaction``).
Verdicts per rho, paired by seed, Student-t 95% intervals: MMoE - shared-bottom and PLE - shared-bottom on the
mean task AUC. Writes the key ``conflict`` (``--key``) of ``benchmarks/results/multitask.json`` (other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from cli_runs import FINAL_EVAL_ONLY, ROOT
from multitask import ARCHITECTURES, REPRESENTATION, run
from results_io import cpu_model, write_result_key
from verdicts import at_least, t_interval

ALL_ARMS = {arm: ARCHITECTURES[arm] for arm in ("shared_bottom", "mmoe", "ple", "mmoe_interaction", "ple_interaction")}
"""``*_interaction``: MMoE / PLE with the experts on DCN-V2's cross output in place of its shared deep MLP."""
INTERACTION = 0.8
"""Total standard deviation of the pairwise-interaction terms in each task's logit (shared + own)."""


def generator(rho: float) -> list[str]:
    """Overrides that make ``multitask_synthetic`` two full-label tasks whose truths correlate by ``rho``."""
    return [
        "data.synthetic.conversion_label=",
        "data.synthetic.delay_column=",
        "model.tasks.1.given=",
        f"data.synthetic.task_correlation={rho}",
        f"data.synthetic.interaction_scale={INTERACTION * math.sqrt(rho):.6f}",
        f"data.synthetic.task_interaction_scale={INTERACTION * math.sqrt(1.0 - rho):.6f}",
    ]


def verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Each gated arm minus shared-bottom on the mean task AUC, and per task, paired by seed."""
    out: dict[str, Any] = {}
    for arm in [a for a in runs if a != "shared_bottom"]:
        diff = [runs[arm][str(s)]["mean_auc"] - runs["shared_bottom"][str(s)]["mean_auc"] for s in seeds]
        interval = t_interval(diff)
        out[f"{arm}_minus_shared_bottom"] = {"per_seed": diff, "interval": interval, "verdict": at_least(interval, 0)}
        for task in ("click", "purchase"):
            per_task = [runs[arm][str(s)][task]["auc"] - runs["shared_bottom"][str(s)][task]["auc"] for s in seeds]
            out[f"{arm}_minus_shared_bottom/{task}"] = {"per_seed": per_task, "interval": t_interval(per_task)}
    out["mean_auc"] = {arm: statistics.mean(runs[arm][str(s)]["mean_auc"] for s in seeds) for arm in runs}
    out["gap_to_oracle"] = {
        arm: {
            task: statistics.mean(runs[arm][str(s)][task]["auc_gap"] for s in seeds) for task in ("click", "purchase")
        }
        for arm in runs
    }
    out["train_flops_per_example"] = {arm: runs[arm][str(seeds[0])]["train_flops_per_example"] for arm in runs}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rhos", default="0.9,0.5,0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "multitask"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multitask.json"))
    parser.add_argument("--key", default="conflict", help="the key of --out to write")
    parser.add_argument("--set", action="append", default=[], help="an override for every run (repeatable)")
    parser.add_argument("--arms", default="shared_bottom,mmoe,ple", help=f"comma-separated, of {', '.join(ALL_ARMS)}")
    parser.add_argument(
        "--shared-bottom-from", default="", help="read shared-bottom's runs from this key of --out (same rho and seeds)"
    )
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    seeds = [int(s) for s in args.seeds.split(",")]
    rhos = [float(r) for r in args.rhos.split(",")]
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        f"trainer.epochs={args.epochs}",
        *REPRESENTATION,
        *FINAL_EVAL_ONLY,
        *args.set,
    ]
    arms = args.arms.split(",")
    stored = json.loads(Path(args.out).read_text()) if args.shared_bottom_from else {}
    started = time.perf_counter()
    by_rho: dict[str, Any] = {}
    for rho in rhos:
        runs: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
        if args.shared_bottom_from:
            runs = {
                "shared_bottom": stored[args.shared_bottom_from]["by_rho"][str(rho)]["runs"]["shared_bottom"],
                **runs,
            }
        for seed in seeds:
            for arm in arms:
                overrides = [*ALL_ARMS[arm], *generator(rho), f"data.synthetic.seed={seed}"]
                runs[arm][str(seed)] = run(work, overrides, seed, common)
                print(f"rho {rho} seed {seed} {arm}: mean AUC {runs[arm][str(seed)]['mean_auc']:.5f}", flush=True)
        by_rho[str(rho)] = {"generator": generator(rho), "runs": runs, "verdicts": verdicts(runs, seeds)}
        print(f"rho {rho}: {by_rho[str(rho)]['verdicts']['mean_auc']}", flush=True)
    result = {
        "what": __doc__.split("\n\n")[0],
        "machine": f"{cpu_model()}, 2 ranks (gloo, CPU)",
        "preset": "multitask_synthetic",
        "train_rows": args.train_rows,
        "epochs": args.epochs,
        "seeds": seeds,
        "arms": {arm: ALL_ARMS[arm] for arm in arms},
        "shared_bottom_from": args.shared_bottom_from or None,
        "overrides": args.set,
        "by_rho": by_rho,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result_key(Path(args.out), args.key, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
