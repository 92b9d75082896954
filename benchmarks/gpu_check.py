"""The first check on a GPU machine (run through ``benchmarks/gpu_check.sh``): plain torch + CUDA is enough.

    bash benchmarks/gpu_check.sh                           # one CUDA GPU; at most 8 minutes
    bash benchmarks/gpu_check.sh --device cpu --tiny       # the same path at tiny shapes on CPU (tests run it)

It needs no TorchRec, FBGEMM or DeepSpeed: everything it imports from recscale is the dense arches, their
configs and FLOP counts, the peak table and the loss wrapper (``modules/``, ``configs/``,
``trainer/peaks.py``), and a bare checkout works (``recscale`` is mapped onto the repository's folders).
Three stages, each model on its own so one failure does not hide the rest:

1. **MFU**: bf16 forward + backward of each dense arch at production shapes (``mfu_gpu.py``'s step and
   shapes: MLPerf's DLRM-DCNv2 at 8,192 examples per GPU, DCN-V2 + HiLoMoE, Wukong at three of the
   paper's scaling configs, Kunlun at sequence length 1,000), CUDA events after warm-up, with the
   per-module table. Writes ``mfu_gpu.json`` beside the check's own results (``recscale project
   --benchmark`` reads it).
2. **Host syncs**: a whole dense training step per arch (the model's loss as the trainer computes it,
   bf16 autocast, backward, the preset's dense optimizer) twice under
   ``torch.cuda.set_sync_debug_mode("error")``: a host synchronisation anywhere in it fails the model
   (``SYNC_MODELS``: every arch once, at production shapes).
3. **GPU tests**: the ``gpu``-marked pytest files that import without TorchRec; the others are listed
   with the reason.

Results: ``benchmarks/results/gpu_check_<device>.json`` (the device's name in the file name and inside).
Exit status 0 only when every model measured, no step synchronised, the tests passed and the whole
check ended inside its time budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from kunlun_common import bootstrap
from results_io import write_results

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["dcnv2_mlperf", "dcnv2_hilomoe", "wukong_0p5g", "wukong_5p6g", "wukong_22g", "kunlun"]
"""What the check measures: DCN-V2 (MLPerf), HiLoMoE, Wukong and Kunlun dense arches."""
SYNC_MODELS = ["dcnv2_mlperf", "dcnv2_hilomoe", "wukong_0p5g", "wukong_5p6g", "kunlun"]
"""Whose training step the sync check runs: every arch once (``wukong_22g`` runs the same code as the
smaller Wukongs, and its 3.2B fp32 weights with Adam state would need about 60 GB)."""
HEAVY_STACKS = ("torchrec", "fbgemm_gpu", "deepspeed")
"""Not on the GPU machine; nothing the check imports may need them."""


# --------------------------------------------------------------------------------------- stage 1: MFU


def mfu_stage(names: list[str], args: argparse.Namespace, device: torch.device) -> tuple[dict, list[str]]:
    """``mfu_gpu.measure`` for every model; (results by model, failures)."""
    import mfu_gpu

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak, source = mfu_gpu.peak_for(device, args.dtype)
    opts = argparse.Namespace(
        tiny=args.tiny, batch=0, compile=False, modules=True, warmup=5, iters=20, dtype=args.dtype
    )
    results, failures = {}, []
    for name in names:
        try:
            results[name] = mfu_gpu.measure(name, opts, device, dtype, peak)
            print(mfu_gpu.summary_line(name, results[name]), flush=True)
        except Exception as err:  # noqa: BLE001 - one model's failure is reported, the others still run
            results[name] = {"error": _describe(err)}
            failures.append(f"mfu {name}: {_describe(err)}")
            print(f"{name:>14}: FAILED {_describe(err)}", flush=True)
        finally:
            _free(device)
    return {"document": mfu_gpu.document(results, device, peak, source, opts), "peak_source": source}, failures


# --------------------------------------------------------------------------------------- stage 2: syncs


class _LookedUp(torch.nn.Module):
    """Stands in for the embedding tables: returns the embeddings they would have looked up."""

    def __init__(self, outputs: Any) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, *_: Any) -> Any:
        return self.outputs


def training_step(name: str, tiny: bool, device: torch.device) -> tuple[Any, Any]:
    """(step, optimizer name): one whole dense training step of ``name`` as the trainer runs it in bf16.

    The dense arch keeps fp32 weights and runs under bf16 autocast inside recscale's ``RecModel`` (the
    loss and auxiliary loss the trainer backpropagates); the embeddings are fixed tensors that need a
    gradient; the preset's dense optimizer steps.
    """
    import mfu_gpu

    from recscale.modules.model import RecModel

    built = mfu_gpu.build(name, tiny, device, torch.float32, 0)
    inputs, batch_size = built.inputs, built.shapes["batch"]
    sequences = "sequences" in inputs
    looked_up = (
        (inputs["pooled"], inputs["sequences"], inputs["masks"], inputs["timestamps"])
        if sequences
        else inputs["pooled"]
    )
    model = RecModel(
        sparse=_LookedUp(looked_up),
        dense=built.model,
        compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        autocast=device.type == "cuda",
        device_type=device.type,
        aux_loss_weight=0.01,
        uses_sequences=sequences,
        uses_timestamps=sequences,
    )
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = SimpleNamespace(
        dense=inputs["dense"].float(),
        sparse=None,
        sequences=None,
        sequence_timestamps=None,
        domain=None,
        labels=(torch.rand(batch_size, 1, generator=g) < 0.25).float().to(device),
        weights=torch.ones(batch_size, device=device),
    )
    optimizer = _optimizer(built.optimizer, built.model.parameters())

    def step() -> None:
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, built.optimizer


def _optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    """The preset's dense optimizer kind with torch's defaults (the check is about syncs, not numerics)."""
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
    }
    return kinds[name](params, lr=1e-3)


def sync_stage(names: list[str], args: argparse.Namespace, device: torch.device) -> tuple[dict, list[str]]:
    """Each model's training step twice under sync debug mode ``error`` (on CUDA); (results, failures)."""
    results, failures = {}, []
    for name in names:
        try:
            step, optimizer = training_step(name, args.tiny, device)
            step()  # warm-up outside the check: lazy initialisation (cuBLAS handles, optimizer state)
            checked = device.type == "cuda"
            if checked:
                torch.cuda.synchronize(device)
                torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(2):
                    step()
            finally:
                if checked:
                    torch.cuda.set_sync_debug_mode("default")
            if checked:
                torch.cuda.synchronize(device)
            results[name] = {"ok": True, "checked": checked, "optimizer": optimizer}
        except Exception as err:  # noqa: BLE001
            results[name] = {"ok": False, "error": _describe(err), "where": _innermost_recscale_frame(err)}
            failures.append(f"sync {name}: {_describe(err)}")
        finally:
            _free(device)
        state = "ok" if results[name]["ok"] else f"FAILED {results[name]['error']}"
        print(
            f"{name:>14}: training step {'under sync debug mode ' if device.type == 'cuda' else ''}{state}", flush=True
        )
    return results, failures


def _innermost_recscale_frame(err: BaseException) -> str:
    """``file:line`` of the deepest frame in the repository (where a sync was asked for), or ''."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if str(ROOT) in f.filename]
    return f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else ""


# --------------------------------------------------------------------------------------- stage 3: tests


def gpu_test_files() -> list[Path]:
    """Test files with a test decorated ``@pytest.mark.gpu`` (or a module-level ``pytestmark`` naming it)."""
    marked = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bpytest\.mark\.gpu\b)", re.MULTILINE)
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py") if marked.search(p.read_text()))


def importable(path: Path, env: dict[str, str]) -> str:
    """'' when the test file imports in a fresh interpreter, else the reason (e.g. ``needs torchrec``)."""
    code = (
        f"import importlib.util, sys; sys.path.insert(0, {str(ROOT)!r}); "
        f"spec = importlib.util.spec_from_file_location('gpu_check_candidate', {str(path)!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return ""
    missing = re.findall(r"No module named '([\w.]+)'", proc.stderr)
    return f"needs {missing[-1].split('.')[0]}" if missing else proc.stderr.strip().splitlines()[-1][:200]


def test_stage(env: dict[str, str], budget_s: float, candidates: list[Path] | None = None) -> tuple[dict, list[str]]:
    """Run the importable ``gpu``-marked test files (default: ``gpu_test_files()``) with ``-m gpu``.

    Returns (results, failures).
    """
    candidates = gpu_test_files() if candidates is None else candidates
    skipped = {_shown(p): why for p in candidates if (why := importable(p, env))}
    runnable = [_shown(p) for p in candidates if _shown(p) not in skipped]
    result: dict[str, Any] = {"files": runnable, "not_importable": skipped}
    for path, why in skipped.items():
        print(f"  {path}: not run ({why})", flush=True)
    if not runnable:
        result["outcome"] = "no gpu-marked test file imports without the heavy stacks"
        print(f"  {result['outcome']}", flush=True)
        return result, []
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={report}"]
        proc = subprocess.run(
            [*cmd, *runnable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30.0, budget_s)
        )
        counts = _junit_counts(report) if report.exists() else {}
    result.update(returncode=proc.returncode, counts=counts, tail=proc.stdout[-2000:])
    print(f"  pytest -m gpu {' '.join(runnable)}: {counts or proc.returncode}", flush=True)
    ok = proc.returncode in (0, 5)  # 5: no test selected by -m gpu
    return result, [] if ok else [f"gpu tests: pytest exited {proc.returncode} ({counts})"]


def _shown(path: Path) -> str:
    """A test file as pytest is given it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _junit_counts(report: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ElementTree

    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


# --------------------------------------------------------------------------------------- driver


def subprocess_env(installed: bool) -> dict[str, str]:
    """The environment of the test subprocesses: ``recscale`` importable from a bare checkout too.

    Without an installed recscale, a temporary folder holds a ``recscale`` link to the repository, so
    ``recscale.modules`` is ``modules/`` as the installed package maps it.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not installed:
        link_dir = Path(tempfile.mkdtemp(prefix="recscale-path-"))
        (link_dir / "recscale").symlink_to(ROOT, target_is_directory=True)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(link_dir), str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def device_slug(name: str) -> str:
    """A file-name form of a device name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _describe(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:300]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU run of the same code)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="MFU dtype (bf16 on GPUs)")
    ap.add_argument("--models", default=",".join(MODELS), help="models of the MFU stage")
    ap.add_argument("--sync-models", default=",".join(SYNC_MODELS), help="models of the sync stage")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new work after this many seconds")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-tests", action="store_true", help="leave out stage 3")
    args = ap.parse_args()
    started = time.perf_counter()
    installed = importlib.util.find_spec("recscale") is not None
    bootstrap()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        from recscale.trainer.peaks import device_description

        device_name = device_description(device)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    sync_names = [n.strip() for n in args.sync_models.split(",") if n.strip()]
    print(f"gpu_check on {device_name} (torch {torch.__version__}, {args.dtype}{', tiny' if args.tiny else ''})")

    failures: list[str] = []
    stages: dict[str, Any] = {}
    print("1. MFU of the dense arches (forward + backward)", flush=True)
    mfu, failed = mfu_stage(names, args, device)
    stages["mfu"], failures = mfu, failures + failed
    print("2. dense training step under torch.cuda.set_sync_debug_mode('error')", flush=True)
    stages["sync"], failed = sync_stage(sync_names, args, device)
    failures += failed
    left = args.budget_s - (time.perf_counter() - started)
    if args.skip_tests:
        stages["tests"] = {"outcome": "skipped (--skip-tests)"}
    elif left < 30:
        stages["tests"] = {"outcome": f"not run: {left:.0f} s of the budget left"}
        failures.append("gpu tests: not run, out of time")
    else:
        print("3. gpu-marked tests that import without TorchRec / FBGEMM / DeepSpeed", flush=True)
        stages["tests"], failed = test_stage(subprocess_env(installed), left)
        failures += failed
    elapsed = time.perf_counter() - started
    if elapsed > args.budget_s:
        failures.append(f"time: {elapsed:.0f} s, over the budget of {args.budget_s:.0f} s")

    out_dir = Path(args.out_dir)
    results = {
        "benchmark": "gpu_check",
        "device": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "tiny": args.tiny,
        "heavy_stacks_present": {m: _present(m) for m in HEAVY_STACKS},
        "recscale_installed": installed,
        "elapsed_s": elapsed,
        "budget_s": args.budget_s,
        "ok": not failures,
        "failures": failures,
        "mfu": {
            name: {k: r.get(k) for k in ("step_ms", "tflops", "mfu", "goal_mfu", "error")}
            for name, r in mfu["document"]["models"].items()
        },
        "peak_tflops": mfu["document"]["peak_tflops"],
        "peak_source": mfu["peak_source"],
        "sync": stages["sync"],
        "tests": stages["tests"],
    }
    path = write_results(out_dir / f"gpu_check_{device_slug(device_name)}.json", results)
    write_results(out_dir / "mfu_gpu.json", mfu["document"])
    print(f"{'OK' if not failures else 'FAILED'} in {elapsed:.0f} s; results in {path} and {out_dir / 'mfu_gpu.json'}")
    for failure in failures:
        print(f"  - {failure}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
