"""recscale's training loop against TorchRec's own DLRM_DCN under DistributedModelParallel, on the same model.

    .venv/bin/python benchmarks/torchrec_speed.py                  # 3 rounds; benchmarks/results/torchrec_speed.json
    .venv/bin/python benchmarks/torchrec_speed.py --rounds 5 --steps 60 --profile

The model is the ``torchrec_dlrm_dcn`` preset: TorchRec's ``DLRM_DCN`` at Criteo shape (dense arch [64, 12],
3 low-rank cross layers of rank 128 over [dense out, 26 pooled], over arch [500, 500, 500, 1], 26 tables of
100,000 rows, dim 12, batch 4096 per rank, Adagrad for the dense part and fused Adagrad for the tables).
Each round runs, one after the other (the order of the first two alternates from round to round):

  recscale    ``recscale train torchrec_dlrm_dcn --nproc 1``: the whole loop, Parquet reading included;
              its ``summary.json`` steady examples/s (the first 3 steps left out)
  torchrec    ``torchrec_dmp.py``: ``torchrec.models.dlrm.DLRM_DCN`` in ``DLRMTrain``, sharded by
              ``DistributedModelParallel`` (world size 1, gloo) with TorchRec's planner, the tables'
              Adagrad fused into backward (``apply_optimizer_in_backward``), the dense Adagrad through
              ``KeyedOptimizerWrapper``, stepped by ``TrainPipelineSparseDist`` (what TorchRec's DLRM
              example does) on batches built before the clock starts from the same Parquet rows; the
              first 3 steps left out too
  recscale x2 the same ``recscale train`` on 2 ranks (same per-rank batch: weak scaling)
  torchrec x2 TorchRec's step on 2 ranks (context: what this machine allows TorchRec)

Every process runs one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). Reported per
round and as the median over rounds: ``speedup`` = recscale / torchrec examples/s on 1 process, and
``weak_scaling`` = recscale's per-rank examples/s at 2 ranks / at 1 rank; the load average before and
after each run is kept (the machine is shared). ``--profile`` adds one profiled run of each (recscale's
``--profile`` trace, ``torch.profiler`` around TorchRec's steps) and splits both steps into matrix
multiplies, embedding kernels (FBGEMM lookup and fused update), the dense optimizer, other ops
(pointwise, copies, reductions, the loss) and time outside any op (Python, the frameworks' glue).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cli_runs import quiet
from results_io import write_results
from trace_split import op_split

ROOT = Path(__file__).resolve().parents[1]
PRESET = "torchrec_dlrm_dcn"
WARMUP_STEPS = 3
"""Steps left out of every measurement (recscale's summary leaves out the same 3)."""


# ------------------------------------------------------------------------------------------ configuration


def overrides(args: argparse.Namespace, cache: Path, runs: Path, world: int) -> list[str]:
    """The ``--set`` overrides of every run: the shared synthetic data, no evaluation or checkpoints."""
    return [
        f"data.cache_dir={cache}",
        f"data.synthetic.num_train={args.steps * args.batch * 2}",  # enough for 2 ranks
        f"trainer.batch_size={args.batch * world}",
        f"trainer.max_steps={args.steps}",
        "trainer.eval_every=0",
        "trainer.log_every=5",
        "checkpoint.at_end=false",
        *quiet(runs),
        f"name=speed{world}",
    ]


def load_config(args: argparse.Namespace, cache: Path, runs: Path, world: int) -> Any:
    """The preset as the runs see it (for the data path and the TorchRec model's shapes)."""
    from recscale.configs import load_config as load

    return load(PRESET, overrides(args, cache, runs, world))


# ------------------------------------------------------------------------------------------ recscale


def recscale_run(args: argparse.Namespace, world: int, cache: Path, runs: Path, profile: bool = False) -> dict:
    """``recscale train`` on ``world`` ranks; its steady throughput and mean phase split (s per step)."""
    cmd = [str(ROOT / ".venv/bin/recscale"), "train", PRESET, "--nproc", str(world)]
    if profile:
        cmd.append("--profile")
    for o in overrides(args, cache, runs, world):
        cmd += ["--set", o]
    before = os.getloadavg()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = Path(next(x for x in proc.stdout.splitlines() if x.startswith("run directory: ")).split(": ", 1)[1])
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r.get("kind") == "train"][1:]  # the first window holds the warm-up
    split = {
        k.removeprefix("time/"): statistics.fmean(r[k] for r in windows) for k in windows[0] if k.startswith("time/")
    }
    tput = summary["throughput"]
    return {
        "examples_per_s": tput["examples_per_s"],
        "examples_per_s_per_rank": tput["examples_per_s_per_rank"],
        "steps_measured": tput["steps_measured"],
        "step_time_s": tput["mean_step_time_s"],
        "phase_s_per_step": split,
        "dense_parameters": summary["dense_parameters"],
        "flops_per_example": summary["flops_per_example"]["train"],
        "run_dir": str(run_dir),
        "load_before": before,
        "load_after": os.getloadavg(),
    }


# ------------------------------------------------------------------------------------------ torchrec


def torchrec_run(args: argparse.Namespace, world: int, cache: Path, runs: Path, profile: str = "") -> dict:
    """TorchRec's DMP step (``torchrec_dmp.py``) on ``world`` ranks under torchrun; rank 0's result."""
    out = Path(tempfile.mkdtemp(dir=runs)) / "torchrec.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    cmd += [str(Path(__file__).with_name("torchrec_dmp.py")), "--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--cache", str(cache), "--runs", str(runs), "--out", str(out)]
    if profile:
        cmd += ["--profile", profile]
    before = os.getloadavg()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"the TorchRec run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "load_before": before, "load_after": os.getloadavg()}


# ------------------------------------------------------------------------------------------ profiles


def profiles(args: argparse.Namespace, cache: Path, runs: Path) -> dict[str, Any]:
    """One profiled run of each side, split by ``op_split``."""
    rec = recscale_run(args, 1, cache, runs, profile=True)
    modules = json.loads((Path(rec["run_dir"]) / "profile" / "modules.json").read_text())
    rec_split = op_split(Path(rec["run_dir"]) / "profile" / modules["trace"], modules["steps"], modules["step_ms"])
    trace = runs / "torchrec.pt.trace.json"
    trc = torchrec_run(args, 1, cache, runs, profile=str(trace))
    prof = trc["profile"]
    trc_split = op_split(trace, prof["steps"], prof["wall_s"] * 1e3 / prof["steps"])
    return {
        "units": "ms per step (profiled steps; the profiler slows both)",
        "recscale": {
            **rec_split,
            "steps": modules["steps"],
            "modules": modules["rows"],
            "other_ms": modules["other_ms"],
        },
        "torchrec": {**trc_split, "steps": prof["steps"]},
    }


# ------------------------------------------------------------------------------------------ main


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (recscale, torchrec, recscale x2, torchrec x2)")
    ap.add_argument("--steps", type=int, default=40, help="steps per run (the first 3 are not measured)")
    ap.add_argument("--batch", type=int, default=4096, help="examples per rank per step")
    ap.add_argument("--no-torchrec-2", action="store_true", help="skip TorchRec's own 2-rank run")
    ap.add_argument("--profile", action="store_true", help="one profiled run of each, split into op categories")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/torchrec_speed.json"))
    args = ap.parse_args()
    if args.steps <= WARMUP_STEPS + 1:
        raise SystemExit(f"--steps: expected more than {WARMUP_STEPS + 1} (the first {WARMUP_STEPS} are warm-up)")

    from recscale.data.prepare import prepare_data
    from recscale.trainer.peaks import cpu_model

    started = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
        runs.mkdir()
        cfg = load_config(args, cache, runs, 1)
        prepare_data(cfg.data, cfg.embeddings)  # generated once, before any clock
        for i in range(args.rounds):
            r: dict[str, Any] = {}
            order = ("recscale", "torchrec") if i % 2 == 0 else ("torchrec", "recscale")
            for side in order:
                r[side] = (recscale_run if side == "recscale" else torchrec_run)(args, 1, cache, runs)
            r["recscale_2"] = recscale_run(args, 2, cache, runs)
            if not args.no_torchrec_2:
                r["torchrec_2"] = torchrec_run(args, 2, cache, runs)
            r["speedup"] = r["recscale"]["examples_per_s"] / r["torchrec"]["examples_per_s"]
            r["weak_scaling"] = r["recscale_2"]["examples_per_s_per_rank"] / r["recscale"]["examples_per_s_per_rank"]
            if "torchrec_2" in r:
                r["torchrec_weak_scaling"] = (
                    r["torchrec_2"]["examples_per_s_per_rank"] / r["torchrec"]["examples_per_s_per_rank"]
                )
            for side in ("recscale", "recscale_2"):
                r[side].pop("run_dir")
            rounds.append(r)
            print(
                f"round {i + 1}: recscale {r['recscale']['examples_per_s']:,.0f} ex/s, TorchRec "
                f"{r['torchrec']['examples_per_s']:,.0f} ex/s (x{r['speedup']:.3f}); recscale weak scaling "
                f"{r['weak_scaling']:.3f}",
                flush=True,
            )
        profile = profiles(args, cache, runs) if args.profile else None

    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if key in r]
        return statistics.median(values) if values else None

    same_model = rounds[0]["recscale"]["dense_parameters"] == rounds[0]["torchrec"]["dense_parameters"]
    out = {
        "benchmark": "torchrec_speed",
        "preset": PRESET,
        "what": "examples/s of recscale's full loop (Parquet reading included) and of TorchRec's DLRM_DCN DMP step "
        "(TrainPipelineSparseDist on pre-built batches), 1 thread per process, alternating rounds",
        "per_rank_batch": args.batch,
        "steps_per_run": args.steps,
        "warmup_steps_excluded": WARMUP_STEPS,
        "threads_per_process": 1,
        "same_dense_parameters": same_model,
        "speedup_median": median("speedup"),
        "speedup_target": 1.2,
        "weak_scaling_median": median("weak_scaling"),
        "weak_scaling_target": 0.9,
        "torchrec_weak_scaling_median": median("torchrec_weak_scaling"),
        "rounds": rounds,
        "profile": profile,
        "load_average": {"start": started, "end": os.getloadavg()},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": _versions(),
    }
    write_results(args.out, out)
    print(json.dumps({k: out[k] for k in ("speedup_median", "weak_scaling_median", "torchrec_weak_scaling_median")}))
    if not same_model:
        print("warning: the two sides' dense parameter counts differ: not the same model", file=sys.stderr)
        return 1
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
