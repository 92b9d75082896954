"""Zipper against one head on matured labels, at equal freshness, on a drifting delayed-conversion stream.

    .venv/bin/python benchmarks/zipper.py            # 3 seeds x (drift, no drift) x 4 arms on 2 CPU ranks
    .venv/bin/python benchmarks/zipper.py --drift 1.0 --key zipper_drift_1.0 --control-from zipper
    .venv/bin/python benchmarks/zipper.py --set trainer.batch_size=512 --key zipper_batch_512   # 4x the steps
    .venv/bin/python benchmarks/zipper.py --set trainer.batch_size=256 --key zipper_batch_256 --seeds 3,4,5,6,7 --extend
    .venv/bin/python benchmarks/zipper.py --set trainer.batch_size=256 --key zipper_batch_256 --seeds 0,1,2,3,4,5,6,7 \
        --arms zipper_scaled                                              # one more arm beside the stored ones
    .venv/bin/python benchmarks/zipper.py --drift 0.5 --data-set data.synthetic.drift_memory=0.8 \
        --set trainer.batch_size=256 --control-from zipper_batch_256 --seeds 0,1,2,3 \
        --arms matured,fresh,zipper_offset,zipper_scaled --key zipper_ar_0.8      # a mean-reverting drift
    .venv/bin/python benchmarks/zipper.py --nproc 1 --set data.reader.shuffle=false --set trainer.batch_size=256 \
        --arms matured,fresh,zipper_offset,zipper_scaled --key zipper_ordered_batch_256   # in time order
    .venv/bin/python benchmarks/zipper.py --nproc 1 --set data.reader.shuffle=false --set trainer.batch_size=256 \
        --data-set data.synthetic.id_effect_scale=0.15 --data-set data.synthetic.interaction_scale=0.2 \
        --data-set data.synthetic.hierarchical_scale=0.2 --data-set data.zipper.order=arrival \
        --seeds 0,1,2,3,4 --key zipper_simple_truth     # a truth the rows nearly learn, in the stream's order
    # the same in impression order (no data.zipper.order, --arms matured,zipper_offset,zipper_scaled, key
    # zipper_simple_truth_impression_order), and each with --data-set data.synthetic.drift_memory=0.9
    # --control-from <that key> (keys zipper_simple_truth_ar_0.9, zipper_simple_truth_ar_0.9_impression_order)

The ``zipper_synthetic`` preset, shrunk to 300,000 training rows over its 60 days: impressions whose
truth drifts daily (``data.synthetic.drift_per_day``, 0.3 here), a purchase after a click with an
Exp(2 days) delay never seen after 7 days; validation is the impressions after NOW against their final
7-day labels. Three datasets are cut at
the same NOW (``recscale data zipper``) and trained the same way:

- ``matured`` (A): one 7-day window: only impressions older than 7 days, with complete labels;
- ``fresh`` (B): one 1-day window: impressions older than 1 day, with the conversions seen within a day;
- ``zipper`` (C): windows of 1, 3 and 7 days, each impression in one (a hash), one head each, the 7-day
  head served; ``zipper_offset``: the same data and heads that share one logit, each shifted by a learned
  offset per window; ``zipper_scaled``: the same data, the 7-day head is the shared logit and a shorter
  window's head predicts its probability times the learned share of conversions the window sees (started
  at the shares the build measured).

Per seed: the purchase task's AUC, NE and calibration (mean prediction / mean label) on the clicked
validation rows. Verdicts per Zipper arm C (Student-t intervals over seeds, paired by seed): with drift,
AUC(C) - AUC(A) >= 0.002 and NE(C) < NE(A) in every seed, C calibrated within 5 % and B under-predicting by
more than 10 %; without drift (the control) |AUC(C) - AUC(A)| < 0.002. Writes the ``zipper`` key (``--key``) of
``benchmarks/results/multitask.json`` (other keys are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cli_runs import ROOT, quiet, recscale, train
from results_io import cpu_model, write_result_key
from verdicts import at_least, at_most, t_interval

DAY = 86_400
ARMS = {
    "matured": ([7 * DAY], 1),
    "fresh": ([DAY], 1),
    "zipper": ([DAY, 3 * DAY, 7 * DAY], 3),
    "zipper_offset": ([DAY, 3 * DAY, 7 * DAY], 3),
    "zipper_scaled": ([DAY, 3 * DAY, 7 * DAY], 3),
}
"""Arm -> (attribution windows in seconds, heads of the purchase task). ``zipper_offset`` and
``zipper_scaled`` train on the ``zipper`` dataset with ``window_heads: offset`` (one shared logit, a
learned shift per window) and ``scaled`` (one shared logit served as is; a shorter window predicts the
probability times the learned share of conversions it sees)."""
DATA_OF = {"zipper_offset": "zipper", "zipper_scaled": "zipper"}
ZIPPERS = ("zipper", "zipper_offset", "zipper_scaled")
"""The Zipper arms, each checked against the matured head."""


def run_arm(
    work: Path, arm: str, seed: int, drift: float, common: list[str], training: list[str], nproc: int = 2
) -> dict[str, float]:
    """Build the arm's dataset at NOW and train on it (``training``: overrides of the training run only); the
    purchase task's final metrics."""
    windows, heads = ARMS[arm]
    shape = [x for x in common if not x.startswith(("data.cache_dir=", "data.synthetic.seconds_per_row="))]
    tag = hashlib.sha256("\n".join(shape).encode()).hexdigest()[:8]  # the generator's settings
    data = work / f"data-{tag}-s{seed}-d{drift}-{DATA_OF.get(arm, arm)}"
    generator = [f"data.synthetic.seed={seed}", f"data.synthetic.drift_per_day={drift}"]
    if not (data / "zipper.json").is_file():
        spec = "[" + ", ".join(str(w) for w in windows) + "]"
        args = ["data", "zipper", "zipper_synthetic", "--synthetic", "--out", str(data)]
        zipper = [f"data.zipper.windows_s={spec}", f"data.zipper.valid_window_s={7 * DAY}"]  # the same labels
        recscale(*args, *[x for s in [*common, *generator, *zipper] for x in ("--set", s)])
    arm_set = [] if heads > 1 else ["model.tasks.1.windows=1", "data.features.window="]
    if arm == "zipper_offset":
        arm_set = ["model.tasks.1.window_heads=offset"]
    if arm == "zipper_scaled":  # F_k start at the shares the build measured on the closed impressions
        shares = json.loads((data / "zipper.json").read_text())["seen_share"][:-1]
        arm_set = ["model.tasks.1.window_heads=scaled", f"model.tasks.1.window_shares=[{','.join(map(str, shares))}]"]
    run_dir, _ = train(
        "zipper_synthetic",
        [
            *common,
            *generator,
            *arm_set,
            *training,
            f"seed={seed}",
            f"data.train_path={data / 'train'}",
            f"data.valid_path={data / 'valid'}",
            *quiet(work / "runs"),
        ],
        nproc,
    )
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [e for e in evals if e["kind"] == "eval"][-1]
    keys = ("auc", "ne", "calibration", "oracle_auc", "logloss")
    out = {k: final[f"{k}/purchase"] for k in keys}
    out["train_rows"] = sum(v["rows"] for v in json.loads((data / "zipper.json").read_text())["train"].values())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "zipper"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--drift", type=float, default=0.3, help="data.synthetic.drift_per_day of the main arms")
    parser.add_argument("--train-rows", type=int, default=300_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multitask.json"))
    parser.add_argument(
        "--arms", default="", help="run only these arms; the others' runs (and seconds) are read from --out"
    )
    parser.add_argument("--key", default="zipper", help="the key of --out to write")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of every training run")
    parser.add_argument("--set", action="append", default=[], help="a training override for every run (repeatable)")
    parser.add_argument(
        "--data-set", action="append", default=[], help="an override of the generator and every run (repeatable)"
    )
    parser.add_argument(
        "--control-from", default="", help="take the no-drift control's runs from this key of --out instead of training"
    )
    parser.add_argument("--extend", action="store_true", help="keep the key's earlier seeds of every arm, add --seeds")
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [
        f"data.cache_dir={work / 'cache'}",
        f"data.synthetic.num_train={args.train_rows}",
        f"data.synthetic.seconds_per_row={60 * DAY / args.train_rows}",
        *args.data_set,
    ]
    started = time.perf_counter()
    path = Path(args.out)
    chosen = args.arms.split(",") if args.arms else list(ARMS)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    before = stored.get(args.key, {})
    earlier = before.get("runs", {})
    if args.extend or (args.arms and before):  # the same recipe: the key keeps earlier runs
        same = {
            "overrides": args.set,
            "data_overrides": args.data_set,
            "drift_per_day": args.drift,
            "train_rows": args.train_rows,
            "ranks": args.nproc,
        }
        defaults = {"data_overrides": [], "ranks": 2}  # keys written before these options existed
        differ = [k for k, v in same.items() if before.get(k, defaults.get(k)) != v]
        if differ or before.get("control_from"):
            flag = "--extend" if args.extend else "--arms"
            raise SystemExit(f"{flag}: {args.key} was run with other {', '.join(differ) or 'control_from'}")
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    if args.control_from:
        runs["no_drift"] = stored[args.control_from]["runs"]["no_drift"]
    for drift in (args.drift,) if args.control_from else (args.drift, 0.0):
        label = "drift" if drift else "no_drift"
        kept = list(ARMS) if args.extend else [arm for arm in ARMS if arm not in chosen]
        runs[label] = {arm: dict(earlier[label][arm]) for arm in kept if earlier.get(label, {}).get(arm)}
        runs[label].update({arm: runs[label].get(arm, {}) for arm in chosen})
        for seed in seeds:
            for arm in chosen:
                result = run_arm(work, arm, seed, drift, common, args.set, args.nproc)
                runs[label][arm][str(seed)] = result
                print(f"{label} seed {seed} {arm}: {result}", flush=True)
    result = {
        "what": __doc__.split("\n\n")[0],
        "machine": f"{cpu_model()}, {args.nproc} rank{'s' if args.nproc > 1 else ''} (gloo, CPU)",
        "preset": "zipper_synthetic",
        "drift_per_day": args.drift,
        "control_from": args.control_from or None,
        "overrides": args.set,
        "data_overrides": args.data_set,
        "train_rows": args.train_rows,
        "ranks": args.nproc,
        "seeds": seeds,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.extend:
        result["seeds"] = sorted({*before["seeds"], *seeds})
    if args.extend or (args.arms and before):  # the time of every run the key holds
        result["seconds"] = round(result["seconds"] + before["seconds"], 1)
    result["verdicts"] = verdicts(runs, result["seeds"])
    write_result_key(path, args.key, result)
    print(json.dumps(result["verdicts"], indent=2))
    return 0


def verdicts(runs: dict[str, dict[str, dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """The acceptance checks of the module docstring for every Zipper arm that ran, each with its per-seed
    values and interval; keys name the arm (``auc_zipper_scaled_minus_matured``, ...)."""
    drift, still = runs["drift"], runs["no_drift"]

    def paired(group: dict[str, dict[str, Any]], a: str, b: str, key: str) -> list[float]:
        return [group[a][str(s)][key] - group[b][str(s)][key] for s in seeds]

    out: dict[str, Any] = {}
    if all(str(s) in drift.get("fresh", {}) for s in seeds):
        fresh_cal = [drift["fresh"][str(s)]["calibration"] for s in seeds]
        out["fresh_calibration"] = {
            "per_seed": fresh_cal,
            "under_by_more_than_10_percent": all(c < 0.9 for c in fresh_cal),
        }
    for arm in ZIPPERS:
        if not all(str(s) in drift.get(arm, {}) and str(s) in drift.get("matured", {}) for s in seeds):
            continue
        gain = paired(drift, arm, "matured", "auc")
        ne_gain = paired(drift, "matured", arm, "ne")
        calibration = [drift[arm][str(s)]["calibration"] for s in seeds]
        out[f"auc_{arm}_minus_matured"] = {
            "per_seed": gain,
            "interval": t_interval(gain),
            "every_seed_at_least_0.002": all(g >= 0.002 for g in gain),
            "verdict": at_least(t_interval(gain), 0.002),
        }
        out[f"ne_matured_minus_{arm}"] = {
            "per_seed": ne_gain,
            "interval": t_interval(ne_gain),
            "every_seed_positive": all(g > 0 for g in ne_gain),
        }
        out[f"{arm}_calibration"] = {
            "per_seed": calibration,
            "within_5_percent": all(abs(c - 1) < 0.05 for c in calibration),
        }
        if not all(str(s) in still.get(arm, {}) and str(s) in still.get("matured", {}) for s in seeds):
            continue
        control = paired(still, arm, "matured", "auc")
        drift_effect = [g - c for g, c in zip(gain, control, strict=True)]
        out[f"control_no_drift_auc_{arm}_minus_matured"] = {
            "per_seed": control,
            "interval": t_interval(control),
            "every_seed_within_0.002": all(abs(c) < 0.002 for c in control),
            "verdict_abs_below_0.002": at_most(t_interval([abs(c) for c in control]), 0.002),
        }
        out[f"drift_effect_on_auc_{arm}_minus_matured"] = {
            "what": "(C - A with drift) - (C - A without), paired by seed: what the fresher rows are worth",
            "per_seed": drift_effect,
            "interval": t_interval(drift_effect),
        }
    out["mean_auc"] = {
        group: {
            arm: statistics.mean(r[str(s)]["auc"] for s in seeds)
            for arm, r in runs[group].items()
            if all(str(s) in r for s in seeds)
        }
        for group in runs
    }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
