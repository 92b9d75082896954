"""Lattice's Partitioner on planted domain markets: does untying by its groups beat tying and per-domain untying?

    .venv/bin/python benchmarks/partitioner.py                 # 3 seeds x (report + 4 models) on 2 CPU ranks
    .venv/bin/python benchmarks/partitioner.py --set data.synthetic.domain_scale=1.0 \
        --set data.synthetic.task_domain_scale=1.0 --key strong_markets    # markets whose truths differ more

Data: the ``lattice_multitask`` preset (the multi-task, multi-domain generator: click, purchase given a
click) with four domains in two planted markets, ``data.synthetic.domain_groups: [[0, 1], [2, 3]]``: the
domains of a market share their users and their truth, and the markets share neither. Per seed:

1. ``recscale data partition`` on the training split (id overlap, label rates and delays, no pilot) gives
   the groups;
2. four Lattice models train on the same data (200k rows, 2 epochs):

   - ``tied``: one copy of the untied layers (the Transformer FFNs and fusion MLPs);
   - ``tied_wide``: one copy, its fusion MLP widened to the FLOPs of ``by_partition`` (80 against 40);
   - ``by_partition``: one copy per group of the report (``model.lattice.domain_groups``);
   - ``per_domain``: one copy per domain (``untie_domains: 4``).

Reported: the report's groups and whether they equal the planted markets; each model's mean task AUC
and training FLOPs per example; ``by_partition`` minus each other model, paired by seed with Student-t
95 % intervals. No target was set for this comparison. Writes ``benchmarks/results/partitioner.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cli_runs import FINAL_EVAL_ONLY, ROOT, quiet, recscale, train
from results_io import cpu_model, write_result_or_key
from verdicts import at_least, t_interval

MARKETS = [[0, 1], [2, 3]]
DATA = [
    "data.synthetic.num_domains=4",
    "data.features.domain_names=[a,b,c,d]",
    f"data.synthetic.domain_groups={json.dumps(MARKETS).replace(' ', '')}",
]
ARMS = {
    "tied": ["model.lattice.untie_domains=0"],
    "tied_wide": ["model.lattice.untie_domains=0", "model.lattice.fmb_mlp=[80]"],
    "by_partition": [],  # the report's groups, per seed
    "per_domain": ["model.lattice.untie_domains=4"],
}


def partition(common: list[str], out: Path) -> dict[str, Any]:
    """``recscale data partition`` on the job's data; its JSON report."""
    recscale("data", "partition", "lattice_multitask", *[x for s in common for x in ("--set", s)], "--json", str(out))
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def run_seed(work: Path, seed: int, base: list[str]) -> dict[str, Any]:
    """The report and the four models of one seed."""
    common = [*base, f"data.synthetic.seed={seed}"]
    report = partition(common, work / f"partition-s{seed}.json")
    groups = report["group_ids"]
    out: dict[str, Any] = {
        "groups": groups,
        "groups_equal_markets": sorted(map(sorted, groups)) == MARKETS,
        "affinity": report["affinity"],
    }
    for arm, sets in ARMS.items():
        if arm == "by_partition":
            sets = [
                "model.lattice.untie_domains=0",
                f"model.lattice.domain_groups={json.dumps(groups).replace(' ', '')}",
            ]
        _, summary = train("lattice_multitask", [*common, f"seed={seed}", *sets, *quiet(work / "runs")])
        final = summary["final_eval"]
        out[arm] = {
            "mean_auc": final["auc"],
            "auc_by_task": {t: final[f"auc/{t}"] for t in ("click", "purchase")},
            "train_flops_per_example": summary["flops_per_example"]["train"],
        }
        print(f"seed {seed} {arm}: mean AUC {final['auc']:.5f}", flush=True)
    return out


def verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """``by_partition`` minus each other arm (mean task AUC, paired by seed)."""
    out: dict[str, Any] = {}
    for other in ("tied", "tied_wide", "per_domain"):
        diff = [runs[str(s)]["by_partition"]["mean_auc"] - runs[str(s)][other]["mean_auc"] for s in seeds]
        interval = t_interval(diff)
        out[f"by_partition_minus_{other}"] = {"per_seed": diff, "interval": interval, "above_0": at_least(interval, 0)}
    out["mean_auc"] = {arm: statistics.mean(runs[str(s)][arm]["mean_auc"] for s in seeds) for arm in ARMS}
    out["train_flops_per_example"] = {arm: runs[str(seeds[0])][arm]["train_flops_per_example"] for arm in ARMS}
    out["report_found_the_markets_every_seed"] = all(runs[str(s)]["groups_equal_markets"] for s in seeds)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "partitioner"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/partitioner.json"))
    parser.add_argument("--set", action="append", default=[], help="a data or training override (repeatable)")
    parser.add_argument("--key", default="", help="write under this key of --out (a variant), keeping the rest")
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        *DATA,
        "trainer.epochs=2",
        *FINAL_EVAL_ONLY,
        *args.set,
    ]
    started = time.perf_counter()
    runs = {str(seed): run_seed(work, seed, base) for seed in seeds}
    result = {
        "what": __doc__.split("\n\n")[0],
        "machine": f"{cpu_model()}, 2 ranks (gloo, CPU)",
        "preset": "lattice_multitask",
        "data": DATA,
        "overrides": args.set,
        "train_rows": args.train_rows,
        "epochs": 2,
        "seeds": seeds,
        "arms": ARMS,
        "runs": runs,
        "verdicts": verdicts(runs, seeds),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result_or_key(args.out, result, args.key)
    print(json.dumps(result["verdicts"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
