"""ExFM on a drifting multi-domain stream: plain student, single-head distillation, auxiliary head, + adapter.

    .venv/bin/python benchmarks/exfm.py               # 5 seeds x (1 teacher + 4 students) on 2 CPU ranks

The ``exfm_streaming`` preset: 8 days of 30,000 impressions over 3 domains, a truth with a per-domain term
and a daily random walk (``drift_per_day`` 0.3). Per seed:

1. the teacher (DCN-V2, over-arch 512x256) streams over all domains' days, scoring each day before training
   on it (``trainer.streaming.predictions``): day k's scores come from a model that has seen days < k (one
   day stale) and no domain input (biased towards the domain mix);
2. ``recscale data attach-teacher --domain 0`` joins those scores to domain 0's rows;
3. four students (DCN-V2, over-arch 64x32, about 1/10 of the teacher's dense FLOPs) stream over domain 0's
   days, single pass: ``plain`` (no teacher term), ``single_head`` (the served head learns the teacher's
   probability too), ``auxiliary`` (a separate distillation head; the served head learns labels only) and
   ``auxiliary_adapter`` (+ the student adapter and its second head).

The measure is progressive validation: each day's normalized entropy scored before the student trains on
it, averaged over days 1..7. Reported per pair of consecutive arms: the relative NE change
``100 (NE_b / NE_a - 1)`` per seed and its Student-t interval. Targets: NE(plain) >= NE(single_head) >
NE(auxiliary) > NE(auxiliary_adapter), the auxiliary head at least 0.1 % better than each of the first two,
the adapter at least 0.02 % better than the auxiliary head alone. Writes ``benchmarks/results/exfm.json``.

``--arms`` picks the students (default the four above). ``auxiliary_adapter_before`` trains the adapter in
ExFM's order (``model.teacher.adapter_update: before``: its own Adam steps first, each step), compared with
the auxiliary head alone and with the jointly trained adapter. ``--extend`` adds ``--seeds`` to the seeds
already recorded (under ``--key``, with the same arms and generator) and judges them all together.
``--recalibration`` trains nothing: from the joined data in ``--work`` it records how far the best shift, affine
or monotone map of the teacher's logit, fitted on each day's labels, would lower its NE (what an adapter could
fix).

Longer streams, where the student has more rows a day (keys ``rows_120k_a_day``, 10 seeds, and
``rows_60k_a_day``, 5 seeds, with ``num_train=480000,seconds_per_row=1.44``)::

    .venv/bin/python benchmarks/exfm.py --work ~/recscale-data/benchmarks/exfm_4x --key rows_120k_a_day \
        --generator data.synthetic.num_train=960000,data.synthetic.seconds_per_row=0.72 --seeds 0,1,2,3,4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from cli_runs import ROOT, quiet, recscale, train
from results_io import cpu_model, write_result_or_key, write_results
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss
from verdicts import at_least, t_interval

ARMS = {
    "plain": ["model.teacher.loss_weight=0"],
    "single_head": ["model.teacher.head=serving"],
    "auxiliary": ["model.teacher.head=auxiliary"],
    "auxiliary_adapter": ["model.teacher.head=auxiliary", "model.teacher.adapter=true"],
    "auxiliary_adapter_before": [
        "model.teacher.head=auxiliary",
        "model.teacher.adapter=true",
        "model.teacher.adapter_update=before",
        "model.teacher.adapter_lr=0.01",  # of 0.001 / 0.01 / 0.1 on tuning seed 10: mean NE 0.92297 / 0.92285 / 0.92462
    ],
}
DEFAULT_ARMS = ("plain", "single_head", "auxiliary", "auxiliary_adapter")
"""The arms a run without ``--arms`` trains: the paper's four (the adapter trained jointly)."""
DOMAIN = 0
"""The students' domain: the teacher scores all three, each student reads one."""
STUDENT = ["model.over_arch=[64,32]", "trainer.streaming.predictions=false"]
STEPS = [  # (better arm, worse arm, the least relative NE gain in % the target asks for)
    ("single_head", "plain", 0.0),
    ("auxiliary", "plain", 0.1),
    ("auxiliary", "single_head", 0.1),
    ("auxiliary_adapter", "auxiliary", 0.02),
    ("auxiliary_adapter_before", "auxiliary", 0.02),
    ("auxiliary_adapter_before", "auxiliary_adapter", 0.0),
]


def teacher_data(work: Path, seed: int, generator: list[str]) -> tuple[Path, dict[str, Any]]:
    """The teacher's run of one seed (trained once, then reused) and the student's data with its scores."""
    student_data = work / f"student-s{seed}"
    record = work / f"teacher-s{seed}.json"
    if not record.is_file():
        teacher_dir, teacher = train("exfm_streaming", [*generator, *quiet(work / "runs")])
        data = next(p for p in (work / "cache").iterdir() if (p / "claims.json").is_file() and _seed_of(p) == seed)
        args = ["--predictions", str(teacher_dir), "--out", str(student_data), "--domain", str(DOMAIN)]
        recscale("data", "attach-teacher", str(data), *args)
        record.write_text(json.dumps(teacher))
    return student_data, json.loads(record.read_text())


def run_seed(work: Path, seed: int, common: list[str], arms: dict[str, list[str]]) -> dict[str, Any]:
    """The teacher, the join and the students of one seed; each student's per-day and mean NE."""
    generator = [f"seed={seed}", f"data.synthetic.seed={seed}", *common]
    student_data, teacher = teacher_data(work, seed, generator)
    source = [
        "data.source=parquet",
        f"data.train_path={student_data / 'train'}",
        f"data.valid_path={student_data / 'valid'}",
        "data.features.teacher=teacher",
    ]
    out: dict[str, Any] = {"teacher": _streaming(teacher), "teacher_on_students_rows": teacher_ne(student_data)}
    for arm, sets in arms.items():
        _, summary = train("exfm_streaming", [*generator, *source, *STUDENT, *sets, *quiet(work / "runs")])
        out[arm] = _streaming(summary)
        print(f"seed {seed} {arm}: mean NE {out[arm]['mean_ne']:.5f}", flush=True)
    return out


def teacher_ne(student_data: Path) -> dict[str, Any]:
    """The teacher's own NE on the students' rows, day by day (its joined logits against their labels)."""
    by_day = {name: _ne(y, _sigmoid(z)) for name, y, z in _scored_days(student_data)}
    return {"mean_ne": statistics.mean(by_day.values()), "ne_by_day": by_day}


def teacher_recalibration(student_data: Path) -> dict[str, Any]:
    """What a recalibration of the teacher's logit could fix, in hindsight: per scored day, the teacher's NE on
    the students' rows raw, after the best shift ``z + b`` and after the best affine map ``a·z + b``, each
    fitted on that day's own labels (the student adapter learns such a map from the labels as they come), and
    after the best monotone map (isotonic regression fitted on the day's even rows, scored on its odd ones)."""
    out: dict[str, Any] = {"raw_ne": [], "shift_ne": [], "affine_ne": [], "isotonic_ne": [], "shift": [], "slope": []}
    for _, y, z in _scored_days(student_data):
        _, shift = _best_map(y, z, affine=False)
        slope, offset = _best_map(y, z, affine=True)
        out["raw_ne"].append(_ne(y, _sigmoid(z)))
        out["shift_ne"].append(_ne(y, _sigmoid(z + shift)))
        out["affine_ne"].append(_ne(y, _sigmoid(slope * z + offset)))
        fit, held = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1  # any monotone map, out of sample
        isotonic = IsotonicRegression(y_min=1e-7, y_max=1 - 1e-7, out_of_bounds="clip").fit(z[fit], y[fit])
        out["isotonic_ne"].append(_ne(y[held], isotonic.predict(z[held])))
        out["shift"].append(shift)
        out["slope"].append(slope)
    return {k: statistics.mean(v) if k.endswith("_ne") else v for k, v in out.items()}


def _scored_days(student_data: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(day, labels [n], teacher logits [n])`` of each scored day of the students' data (day 0 has none)."""
    for day in sorted((student_data / "train").iterdir())[1:]:
        table = pq.read_table(day, columns=["label", "teacher"])
        z = table["teacher"].to_numpy(zero_copy_only=False).astype(np.float64)
        yield day.name, table["label"].to_numpy().astype(np.float64), z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _ne(y: np.ndarray, p: np.ndarray) -> float:
    """Normalized entropy: the logloss over the entropy of the rows' base rate."""
    q = y.mean()
    return float(log_loss(y, p, labels=[0, 1]) / -(q * math.log(q) + (1 - q) * math.log(1 - q)))


def _best_map(y: np.ndarray, z: np.ndarray, affine: bool) -> tuple[float, float]:
    """``(a, b)`` minimising the logloss of ``σ(a·z + b)`` on these rows (``a`` = 1 unless ``affine``): Newton."""
    a, b = 1.0, 0.0
    for _ in range(50):
        p = _sigmoid(a * z + b)
        w = p * (1 - p)
        if affine:
            hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
            da, db = np.linalg.solve(hess, np.array([np.sum((p - y) * z), np.sum(p - y)]))
        else:
            da, db = 0.0, np.sum(p - y) / np.sum(w)
        a, b = a - float(da), b - float(db)
        if abs(da) + abs(db) < 1e-10:
            break
    return a, b


def _seed_of(data: Path) -> int:
    return int(json.loads((data / "claims.json").read_text())["synthetic"]["seed"])


def _streaming(summary: dict[str, Any]) -> dict[str, Any]:
    s = summary["streaming"]
    return {
        "mean_ne": s["mean_ne"],
        "ne_by_day": {r["period"]: r["ne"] for r in s["progressive"]},
        "auc_by_day": {r["period"]: r["auc"] for r in s["progressive"]},
        "flops_per_example_train": summary["flops_per_example"]["train"],
    }


def verdicts(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Each step of the expected order: the relative NE gain per seed, its interval and the verdict."""
    out: dict[str, Any] = {}
    ran = set(runs[str(seeds[0])])
    for better, worse, target in STEPS:
        if not {better, worse} <= ran:
            continue
        gain = [100 * (1 - runs[str(s)][better]["mean_ne"] / runs[str(s)][worse]["mean_ne"]) for s in seeds]
        interval = t_interval(gain)
        out[f"ne_gain_pct_{better}_over_{worse}"] = {
            "per_seed": gain,
            "interval": interval,
            "target_pct": target,
            "every_seed_positive": all(g > 0 for g in gain),
            "verdict": at_least(interval, target),
        }
    arms = ["teacher", "teacher_on_students_rows", *(arm for arm in ARMS if arm in ran)]
    out["mean_ne"] = {arm: statistics.mean(runs[str(s)][arm]["mean_ne"] for s in seeds) for arm in arms}
    return out


GRID = [(beta, w) for beta in (1.0, 5.0, 20.0) for w in (1.0, 3.0)]
"""(``grad_scale`` β, ``loss_weight`` w) of the auxiliary head, swept on a tuning seed before the main seeds."""


def sweep(work: Path, seeds: list[int], common: list[str], out: str) -> int:
    """The auxiliary arm over ``GRID`` on ``seeds`` (tuning seeds, not the reported ones): the ``tuning`` key."""
    aux = ARMS["auxiliary"]
    arms = {
        f"auxiliary_b{beta:g}_w{w:g}": [*aux, f"model.teacher.grad_scale={beta}", f"model.teacher.loss_weight={w}"]
        for beta, w in GRID
    }
    runs = {str(seed): run_seed(work, seed, common, {"plain": ARMS["plain"], **arms}) for seed in seeds}
    mean = {arm: statistics.mean(runs[str(s)][arm]["mean_ne"] for s in seeds) for arm in ["plain", *arms]}
    path = Path(out)
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["tuning"] = {"seeds": seeds, "grid": GRID, "mean_ne": mean, "best": min(arms, key=lambda a: mean[a])}
    write_results(path, result)
    print(json.dumps(result["tuning"], indent=2))
    return 0


def _recorded(out: Path, key: str, arms: dict[str, list[str]], generator: list[str]) -> dict[str, Any]:
    """What ``--extend`` adds to: the result under ``key`` of ``out`` (the top level without a key), which must
    have been run with the same arms and generator settings."""
    stored = json.loads(out.read_text()) if out.is_file() else {}
    before = stored.get(key, {}) if key else stored
    if not before.get("runs"):
        raise SystemExit(f"--extend: {out} has no runs under {key or 'its top level'}")
    differ = [name for name, v in (("arms", arms), ("generator", generator)) if before.get(name, []) != v]
    if differ:
        raise SystemExit(f"--extend: {key or out} was run with other {' and '.join(differ)}")
    return before


def recalibration(work: Path, seeds: list[int], out: Path, key: str) -> int:
    """``--recalibration``: ``teacher_recalibration`` of the seeds' joined data in ``work``, added to the result
    under ``key`` (the top level without one): per seed, and the means over seeds."""
    per_seed = {str(seed): teacher_recalibration(work / f"student-s{seed}") for seed in seeds}
    stored = json.loads(out.read_text()) if out.is_file() else {}
    result = stored.get(key, {}) if key else stored
    slopes = [a for r in per_seed.values() for a in r["slope"]]
    shifts = [b for r in per_seed.values() for b in r["shift"]]
    result["teacher_recalibration"] = {
        "what": "the teacher's NE on the students' rows: raw, after the best shift of its logit and after the best "
        "affine map, each fitted on the day's own labels (hindsight), and after isotonic regression fitted on the "
        "day's even rows and scored on its odd ones; days 1-7 averaged, then seeds",
        **{
            k: statistics.mean(r[k] for r in per_seed.values())
            for k in ("raw_ne", "shift_ne", "affine_ne", "isotonic_ne")
        },
        "slope_range": [min(slopes), max(slopes)],
        "shift_range": [min(shifts), max(shifts)],
        "per_seed": per_seed,
    }
    write_result_or_key(out, result, key)
    print(json.dumps({k: v for k, v in result["teacher_recalibration"].items() if k != "per_seed"}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path.home() / "recscale-data" / "benchmarks" / "exfm"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/exfm.json"))
    parser.add_argument("--auxiliary", default="", help="k=v,... added to both auxiliary arms (chosen by --grid)")
    parser.add_argument("--grid", action="store_true", help="only sweep grad_scale x loss_weight of 'auxiliary'")
    parser.add_argument("--generator", default="", help="k=v,... generator settings of a variant (with --key)")
    parser.add_argument("--key", default="", help="write the result under this key of --out (a variant)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"arms to train, of {', '.join(ARMS)}")
    parser.add_argument(
        "--extend", action="store_true", help="keep the recorded seeds (same arms and generator), add --seeds"
    )
    parser.add_argument(
        "--recalibration", action="store_true", help="only add teacher_recalibration (from --work's joined data)"
    )
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [f"data.cache_dir={work / 'cache'}", *[x for x in args.generator.split(",") if x]]
    started = time.perf_counter()
    if args.grid:
        return sweep(work, seeds, common, args.out)
    if args.recalibration:
        return recalibration(work, seeds, Path(args.out), args.key)
    extra = [x for x in args.auxiliary.split(",") if x]
    chosen = [a for a in args.arms.split(",") if a]
    if unknown := sorted(set(chosen) - set(ARMS)):
        parser.error(f"--arms: no arm named {', '.join(unknown)}; arms: {', '.join(ARMS)}")
    arms = {arm: [*ARMS[arm], *extra] if arm.startswith("auxiliary") else ARMS[arm] for arm in chosen}
    before = _recorded(Path(args.out), args.key, arms, common[1:]) if args.extend else {}
    runs = {str(seed): run_seed(work, seed, common, arms) for seed in seeds}
    result = {
        "what": __doc__.split("\n\n")[0],
        "machine": f"{cpu_model()}, 2 ranks (gloo, CPU)",
        "preset": "exfm_streaming",
        "student": STUDENT,
        "arms": arms,
        "seeds": seeds,
        "runs": runs,
        "verdicts": verdicts(runs, seeds),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if before:  # the same recipe: the earlier seeds, their time, and verdicts over all of them
        result["seeds"] = sorted({*before["seeds"], *seeds})
        result["runs"] = {**before["runs"], **runs}
        result["verdicts"] = verdicts(result["runs"], result["seeds"])
        result["seconds"] = round(result["seconds"] + before["seconds"], 1)
    if args.key:
        result["generator"] = common[1:]
    write_result_or_key(args.out, result, args.key)  # without a key, the tuning sweep and the variants stay
    print(json.dumps(result["verdicts"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
