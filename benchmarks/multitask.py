"""Multi-task architectures and teacher knowledge on the multi-task, multi-domain planted-truth generator.

    .venv/bin/python benchmarks/multitask.py --part architectures   # 4 models x 3 seeds on 2 CPU ranks
    .venv/bin/python benchmarks/multitask.py --part teacher         # baseline + 3 teacher hit rates x 3 seeds
    .venv/bin/python benchmarks/multitask.py --part esmm            # purchase masked / ESMM / + learned weights

Data: the ``multitask_synthetic`` preset (click on every impression, purchase after a click, three domains
whose truth and item distribution differ, each task with its own signal), so every task's oracle AUC is
known and reported beside each model's.

``architectures``: DCN-V2 as the shared bottom of shared-bottom, MMoE and PLE (the preset's sizes), and a
Lattice network sized to no more training FLOPs per example than PLE, once with its fusion-block MLP untied
over the three domains (it then reads the domain, which the others do not) and once tied (the same inputs
as the others). Verdicts (Student-t intervals over seeds, paired by seed): MMoE and PLE each beat
shared-bottom on the mean task AUC; Lattice beats PLE by >= 0.1 % (relative) at no more FLOPs.

``teacher`` (KTAP: a teacher's stored logits as soft labels and input features): the stand-in teacher is the
true logit plus N(0, 0.3^2) noise, present on a share h of the rows. Verdicts: at h = 1 the mean task AUC
gains >= 0.005 over the same model without a teacher; the gain grows with h; at h = 0 it is within 0.001.

``esmm``: PLE with the purchase task masked to clicks (today's default), in ESMM form (``given_mode: esmm``,
trained as p_click · p_purchase on every row) and in ESMM form with learned task weights
(``model.task_weighting: uncertainty``). Reported, no target: the purchase AUC on clicked rows (the CVR
metric), the click AUC, the ESMM arms' CTCVR AUC on every row with its oracle, paired by seed.

Each part writes its key of ``benchmarks/results/multitask.json`` (other keys are kept). ``--extend`` (with
``--part architectures``) keeps every recorded run and adds ``--seeds`` to ``--arms``; each pair is then judged on
the seeds both arms ran::

    .venv/bin/python benchmarks/multitask.py --part architectures --extend \
        --arms lattice_small,ple_interaction --seeds 5,6,7,8,9,10,11,12,13,14
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cli_runs import FINAL_EVAL_ONLY, ROOT, quiet, train
from results_io import cpu_model, write_result_key
from verdicts import at_least, at_most, t_interval

LATTICE = [
    "model.arch=lattice",
    "model.multitask.structure=none",
    "model.lattice.dim=16",
    "model.lattice.num_layers=2",
    "model.lattice.num_fmb_tokens=6",
    "model.lattice.num_lcb_tokens=4",
    "model.lattice.fm_rank=8",
    "model.lattice.fmb_mlp=[40]",
    "model.lattice.task_mlp=[32]",
    "model.lattice.ecs_map=tokens",
    "model.lattice.dense_tokens=2",
    "model.lattice.untie_domains=3",
]
ARCHITECTURES = {
    "shared_bottom": ["model.multitask.structure=shared_bottom"],
    "mmoe": ["model.multitask.structure=mmoe"],
    "ple": ["model.multitask.structure=ple"],
    "lattice": LATTICE,
    "lattice_tied": [*LATTICE, "model.lattice.untie_domains=0", "model.lattice.fmb_mlp=[120]"],
    "mmoe_interaction": ["model.multitask.structure=mmoe", "model.multitask.expert_input=interaction"],
    "ple_interaction": ["model.multitask.structure=ple", "model.multitask.expert_input=interaction"],
    "lattice_small": [*LATTICE, "model.lattice.fmb_mlp=[30]"],
    "lattice_tied_small": [*LATTICE, "model.lattice.untie_domains=0", "model.lattice.fmb_mlp=[90]"],
}
"""``lattice`` reads the domain (its untied fusion MLP), which the DCN-V2-based models never see;
``lattice_tied`` (one fusion MLP, widened to the same FLOPs) sees what they see: the fair comparison.
``*_interaction``: the experts on DCN-V2's cross output in place of its shared deep MLP. ``lattice_small`` and
``lattice_tied_small``: the fusion MLP narrowed so that Lattice costs no more training FLOPs per example than
``ple_interaction`` (293,696 against 296,976)."""
REPRESENTATION = ["model.multitask.expert_input=representation"]
"""Every arm's base: the preset's experts read the cross output (``interaction``), but ``shared_bottom``, ``mmoe``,
``ple`` and the ``teacher`` and ``esmm`` parts were measured with the experts on the shared deep MLP's output;
the ``*_interaction`` arms set it back."""
TEACHER = ["data.features.teacher=teacher_logit", "data.synthetic.teacher_noise=0.3"]
TEACHER_ARMS = {
    "no_teacher": [],
    "h0": [*TEACHER, "data.synthetic.teacher_hit_rate=0.0"],
    "h0.5": [*TEACHER, "data.synthetic.teacher_hit_rate=0.5"],
    "h1": [*TEACHER, "data.synthetic.teacher_hit_rate=1.0"],
}
ESMM_ARMS = {
    "mask": [],
    "esmm": ["model.tasks.1.given_mode=esmm"],
    "esmm_uncertainty": ["model.tasks.1.given_mode=esmm", "model.task_weighting=uncertainty"],
}
TASKS = ("click", "purchase")


def run(work: Path, overrides: list[str], seed: int, common: list[str]) -> dict[str, Any]:
    """One training run; the final per-task metrics, the mean task AUC and the FLOPs per example."""
    run_dir, summary = train("multitask_synthetic", [*common, f"seed={seed}", *overrides, *quiet(work / "runs")])
    final = summary["final_eval"]
    out: dict[str, Any] = {"mean_auc": final["auc"], "train_flops_per_example": summary["flops_per_example"]["train"]}
    for task in (*TASKS, "purchase_ctcvr"):
        if f"auc/{task}" in final:
            out[task] = {k: final.get(f"{k}/{task}") for k in ("auc", "oracle_auc", "auc_gap", "ne", "calibration")}
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("kind") == "train"][-1]
    weights = {k: v for k, v in last.items() if k.startswith("task_weight/")}
    if weights:
        out["task_weights"] = weights
    out["run_dir"] = str(run_dir)
    return out


def _both(runs: dict[str, dict[str, Any]], a: str, b: str, seeds: list[int]) -> list[int]:
    """The seeds both arms ran (``--extend`` may add seeds to some arms only)."""
    return [s for s in seeds if str(s) in runs[a] and str(s) in runs[b]]


def _paired(runs: dict[str, dict[str, Any]], a: str, b: str, seeds: list[int], relative: bool = False) -> list[float]:
    values = []
    for s in seeds:
        x, y = runs[a][str(s)]["mean_auc"], runs[b][str(s)]["mean_auc"]
        values.append((x - y) / y if relative else x - y)
    return values


def architecture_verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """MMoE / PLE over shared-bottom, Lattice over PLE (relative), and the FLOPs condition."""
    out: dict[str, Any] = {}
    for arm in [a for a in ("mmoe", "ple", "mmoe_interaction", "ple_interaction") if runs.get(a)]:
        both = _both(runs, arm, "shared_bottom", seeds)
        diff = _paired(runs, arm, "shared_bottom", both)
        interval = t_interval(diff)
        out[f"{arm}_minus_shared_bottom"] = {
            "seeds": both,
            "per_seed": diff,
            "interval": interval,
            "verdict": at_least(interval, 0),
        }
    flops = {arm: next(iter(runs[arm].values()))["train_flops_per_example"] for arm in runs}
    lattices = ("lattice", "lattice_tied", "lattice_small", "lattice_tied_small")
    for arm, ple in [(a, p) for a in lattices for p in ("ple", "ple_interaction")]:
        if not runs.get(arm) or not runs.get(ple):
            continue
        both = _both(runs, arm, ple, seeds)
        rel = _paired(runs, arm, ple, both, relative=True)
        interval = t_interval(rel)
        out[f"{arm}_over_{ple}_relative"] = {
            "seeds": both,
            "per_seed": rel,
            "interval": interval,
            "verdict": at_least(interval, 0.001),
            f"flops_le_{ple}": flops[arm] <= flops[ple],
        }
    out["train_flops_per_example"] = flops
    every = [s for s in seeds if all(str(s) in runs[arm] for arm in runs)]
    out["mean"] = {  # over the seeds every arm ran, so that the rows compare
        arm: {
            "mean_auc": statistics.mean(runs[arm][str(s)]["mean_auc"] for s in every),
            **{
                f"{task}_gap_to_oracle": statistics.mean(runs[arm][str(s)][task]["auc_gap"] for s in every)
                for task in TASKS
            },
        }
        for arm in runs
    }
    out["mean_over_seeds"] = every
    return out


def teacher_verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Gain at h = 1 >= 0.005, monotone in h, and h = 0 within 0.001 of no teacher."""
    gains = {arm: _paired(runs, arm, "no_teacher", seeds) for arm in ("h0", "h0.5", "h1")}
    means = {arm: statistics.mean(v) for arm, v in gains.items()}
    full = t_interval(gains["h1"])
    empty = t_interval([abs(g) for g in gains["h0"]])
    return {
        "gain_h1": {"per_seed": gains["h1"], "interval": full, "verdict": at_least(full, 0.005)},
        "gain_h0.5": {"per_seed": gains["h0.5"], "interval": t_interval(gains["h0.5"])},
        "gain_h0": {"per_seed": gains["h0"], "interval": t_interval(gains["h0"]), "abs_verdict": at_most(empty, 0.001)},
        "monotone_in_hit_rate": means["h0"] <= means["h0.5"] <= means["h1"],
        "per_seed_monotone": [gains["h0"][i] <= gains["h0.5"][i] <= gains["h1"][i] for i in range(len(seeds))],
    }


def esmm_verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-task AUC differences of the ESMM arms against the masked task, paired by seed (no target)."""
    out: dict[str, Any] = {}
    for arm in ("esmm", "esmm_uncertainty"):
        for task in TASKS:
            diff = [runs[arm][str(s)][task]["auc"] - runs["mask"][str(s)][task]["auc"] for s in seeds]
            out[f"{arm}_minus_mask/{task}_auc"] = {"per_seed": diff, "interval": t_interval(diff)}
        gaps = [runs[arm][str(s)]["purchase_ctcvr"]["auc_gap"] for s in seeds]
        out[f"{arm}/purchase_ctcvr_gap_to_oracle"] = {"per_seed": gaps, "mean": statistics.mean(gaps)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["architectures", "teacher", "esmm"], required=True)
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "multitask"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multitask.json"))
    parser.add_argument(
        "--arms", default="", help="run only these arms (comma-separated); the others' runs are read from --out"
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="architectures: keep every recorded run and add --seeds to --arms (pairs are judged on shared seeds)",
    )
    args = parser.parse_args()
    if args.extend and args.part != "architectures":
        parser.error("--extend: only --part architectures judges arms that ran different seeds")
    work = Path(args.work).expanduser()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        *REPRESENTATION,
        "trainer.epochs=2",
        *FINAL_EVAL_ONLY,
    ]
    arms = {"architectures": ARCHITECTURES, "teacher": TEACHER_ARMS, "esmm": ESMM_ARMS}[args.part]
    started = time.perf_counter()
    path = Path(args.out)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    chosen = args.arms.split(",") if args.arms else list(arms)
    runs: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
    if args.extend:
        before = merged.get(args.part, {})
        if before.get("train_rows", args.train_rows) != args.train_rows or not before.get("runs"):
            raise SystemExit(f"--extend: {path} has no {args.part} runs of {args.train_rows} training rows")
        runs.update({arm: dict(r) for arm, r in before["runs"].items()})
    elif args.arms:
        runs.update({arm: r for arm, r in merged[args.part]["runs"].items() if arm not in chosen})
    for seed in seeds:
        for arm in chosen:
            overrides = arms[arm]
            seeded = [*overrides, f"data.synthetic.seed={seed}"]
            runs[arm][str(seed)] = run(work, seeded, seed, common)
            print(f"seed {seed} {arm}: mean AUC {runs[arm][str(seed)]['mean_auc']:.5f}", flush=True)
    judge = {"architectures": architecture_verdicts, "teacher": teacher_verdicts, "esmm": esmm_verdicts}[args.part]
    if args.extend:
        seeds = sorted({*merged[args.part]["seeds"], *seeds})
    result = {
        "what": __doc__.split("\n\n")[0],
        "machine": f"{cpu_model()}, 2 ranks (gloo, CPU)",
        "preset": "multitask_synthetic",
        "train_rows": args.train_rows,
        "epochs": 2,
        "seeds": seeds,
        "arms": {arm: overrides for arm, overrides in arms.items()},
        "runs": runs,
        "verdicts": judge(runs, seeds),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.arms or args.extend:  # the kept runs' time counts too
        result["seconds"] = round(result["seconds"] + merged[args.part]["seconds"], 1)
    write_result_key(path, args.part, result)
    print(json.dumps(result["verdicts"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
