"""MFU of the dense arches (DCN-V2, Wukong at the paper's scaling configs, HiLoMoE, Kunlun), bf16, fwd + bwd.

    python benchmarks/mfu_gpu.py                                   # CUDA, production shapes, the default models
    python benchmarks/mfu_gpu.py --models wukong_5p6g,kunlun --compile
    python benchmarks/mfu_gpu.py --device cpu --tiny               # smoke test of the script itself

Plain torch (the GPU benchmark machine has no TorchRec): each dense arch is built from its preset
through the model's own builder with duck-typed input shapes; its inputs are what the sparse arch would
hand it (pooled embeddings that need a gradient, dense features, padded sequences for Kunlun), so the
embedding lookups are not in the measured step (they are memory traffic, not FLOPs). One step =
forward + backward of the whole arch (no optimizer), timed with CUDA events after warm-up.
MFU = analytic training FLOPs per example (the model's ``flops()``, active experts only) x examples/s /
the device's dense bf16 peak (``recscale.trainer.peaks``: vendor table by device name; a matmul probe on
CPU). ``--modules`` adds a per-module time and MFU table from ``torch.profiler`` (the trainer's
``--profile`` attribution), which says what bounds a model that misses the goal.

The Kunlun stack is the one of ``mfu_gpu_kunlun.py`` (its shapes, inputs and step), reused here.
Results: ``benchmarks/results/mfu_gpu.json`` with, per model, ``mfu``, ``tflops``, ``device``, ``shapes``.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from kunlun_common import PRODUCTION, TINY, bootstrap, build_dense
from mfu_gpu_kunlun import make_inputs, timed, train_step
from results_io import write_results

GOAL_MFU = 0.40
"""The issue's goal for the Wukong and Kunlun stacks (fraction of the dense bf16 peak)."""

# name -> (preset, overrides at production shapes, overrides at --tiny, examples per step (prod, tiny))
PRESET_MODELS: dict[str, tuple[str, list[str], list[str], tuple[int, int]]] = {
    # MLPerf's DLRM-DCNv2 as its reference trains it: global batch 65,536 on 8 GPUs
    "dcnv2_mlperf": (
        "mlperf_dlrm_dcnv2",
        [],
        ["embeddings.dim=8", "model.dcnv2.low_rank=8", "model.over_arch=[32]", "model.dense_arch=[16,8]"],
        (8192, 8),
    ),
    "dcnv2": (
        "dcnv2_criteo",
        ["embeddings.dim=128", "model.dcnv2.low_rank=256", "model.over_arch=[1024,1024,1024]"],
        ["embeddings.dim=8", "model.dcnv2.low_rank=8", "model.over_arch=[32]"],
        (8192, 8),
    ),
    "dcnv2_hilomoe": (
        "dcnv2_hilomoe",
        ["embeddings.dim=128", "model.dcnv2.low_rank=256", "model.over_arch=[1024,1024,1024]"],
        ["embeddings.dim=8", "model.dcnv2.low_rank=8", "model.over_arch=[32]", "model.hilomoe.num_experts=2"],
        (8192, 8),
    ),
    **{
        f"wukong_{size}": (
            f"wukong_scale_{size}",
            [],
            ["embeddings.dim=8", "model.wukong.fmb_mlp=[16]", "model.over_arch=[16]", "model.dense_arch=[16]"]
            + [f"model.wukong.{k}=4" for k in ("num_fmb_tokens", "num_lcb_tokens", "fm_rank")],
            (batch, 8),
        )
        for size, batch in (("0p5g", 4096), ("1p25g", 4096), ("5p6g", 2048), ("22g", 1024), ("108g", 512))
    },
}
DEFAULT_MODELS = ["dcnv2_mlperf", "dcnv2", "dcnv2_hilomoe", "wukong_0p5g", "wukong_5p6g", "wukong_22g", "kunlun"]


def pooled_layout(cfg: Any) -> Any:
    """The sparse arch's pooled output layout (table order, then each table's features), TorchRec-free."""
    names, dims = [], []
    for table in cfg.embeddings.tables:
        for f in cfg.data.features.sparse:
            if f.table == table.name:
                names.append(f.name)
                dims.append(table.dim or cfg.embeddings.dim)
    from recscale.modules.layout import PooledLayout

    return PooledLayout(tuple(names), tuple(dims))


@dataclass
class Built:
    """One dense arch ready to time: ``step()`` runs forward + backward once on ``inputs``."""

    model: torch.nn.Module
    step: Callable[[], None]
    shapes: dict[str, Any]
    inputs: dict[str, Any]
    """The arch's keyword inputs: ``dense``, ``pooled`` (+ ``sequences``, ``masks``, ``timestamps``)."""
    optimizer: str
    """The preset's dense optimizer (``adam``, ``adagrad``, ...)."""


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype, batch: int) -> Built:
    """Any model of this script by name (``kunlun`` or a key of ``PRESET_MODELS``)."""
    if name == "kunlun":
        return build_kunlun_model(tiny, device, dtype, batch)
    return build_preset_model(name, tiny, device, dtype, batch)


def build_preset_model(name: str, tiny: bool, device: torch.device, dtype: torch.dtype, batch: int) -> Built:
    """A preset-built arch at its production (or tiny) shapes."""
    from recscale.configs import load_config
    from recscale.modules.dcnv2 import DCNv2Dense
    from recscale.modules.hilomoe.convert import build_moe_dense
    from recscale.modules.hilomoe.spec import DEFAULT_TOWERS
    from recscale.modules.wukong.spec import build_wukong

    preset, prod, small, batches = PRESET_MODELS[name]
    cfg = load_config(preset, small if tiny else prod)
    layout = pooled_layout(cfg)
    from recscale.modules.registry import ModelInputs

    inputs = ModelInputs(num_dense=len(cfg.data.features.dense), pooled=layout, num_tasks=len(cfg.data.features.labels))
    m = cfg.model
    with torch.device(device):
        if m.arch in ("dcnv2", "dcnv2_hilomoe"):
            model = DCNv2Dense(
                num_dense=inputs.num_dense,
                pooled_dim=layout.total_dim,
                bottom=m.dense_arch,
                deep=m.over_arch,
                num_cross_layers=m.dcnv2.num_cross_layers,
                low_rank=m.dcnv2.low_rank,
                structure=m.dcnv2.structure,
                num_tasks=inputs.num_tasks,
                activation=m.activation,
            )
            if m.arch == "dcnv2_hilomoe":
                model = build_moe_dense(model, m.hilomoe, DEFAULT_TOWERS["dcnv2"])
        else:
            model = build_wukong(m, inputs)  # type: ignore[arg-type]
    model = model.to(dtype)
    b = batch or batches[1 if tiny else 0]
    dense = torch.randn(b, inputs.num_dense, device=device, dtype=dtype)
    pooled = torch.randn(b, layout.total_dim, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        logits, aux, _ = model(dense, pooled)
        (logits.float().sum() + aux.float()).backward()

    shapes: dict[str, Any] = {
        "preset": preset,
        "overrides": small if tiny else prod,
        "batch": b,
        "num_dense": inputs.num_dense,
        "num_sparse": layout.num_features,
        "embedding_dim": layout.uniform_dim(),
        "model": {"arch": m.arch, "dense_arch": m.dense_arch, "over_arch": m.over_arch},
    }
    if m.arch.startswith("wukong"):
        shapes["model"]["wukong"] = {
            k: getattr(m.wukong, k) for k in ("num_layers", "num_fmb_tokens", "num_lcb_tokens", "fm_rank", "fmb_mlp")
        }
    if m.arch.endswith("hilomoe"):
        shapes["model"]["hilomoe"] = {k: getattr(m.hilomoe, k) for k in ("num_experts", "num_layers", "routing")}
    if m.arch.startswith("dcnv2"):
        shapes["model"]["dcnv2"] = {k: getattr(m.dcnv2, k) for k in ("num_cross_layers", "low_rank", "structure")}
    return Built(model, step, shapes, {"dense": dense, "pooled": pooled}, cfg.optimizer.dense.name)


def build_kunlun_model(tiny: bool, device: torch.device, dtype: torch.dtype, batch: int) -> Built:
    """The Kunlun stack of ``mfu_gpu_kunlun.py`` (SWA window 256 at production)."""
    shapes = TINY if tiny else PRODUCTION
    window = 0 if tiny else 256
    with torch.device(device):
        model = build_dense(shapes, window=window, compskip=True, backend="sdpa")
    model = model.to(dtype)
    b = batch or (8 if tiny else 256)
    inputs = make_inputs(shapes, b, device, dtype, fill=1.0)
    described = {**shapes.as_dict(), "batch": b, "window": window, "compskip": True}
    return Built(model, train_step(model, inputs), described, inputs, "adam")


def measure(
    name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, peak: float | None
) -> dict[str, Any]:
    """Build, time and (optionally) profile one model."""
    torch.manual_seed(0)
    built = build(name, args.tiny, device, dtype, args.batch)
    model, shapes = built.model, built.shapes
    runner: Callable[[], None] = built.step
    if args.compile:
        model.forward = torch.compile(model.forward)  # type: ignore[method-assign]
    per_example = sum(c.train for c in model.flops().values())
    warmup, iters = (1, 2) if args.tiny else (args.warmup, args.iters)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(runner, device, warmup, iters)
    batch = shapes["batch"]
    achieved = per_example * batch / seconds
    result: dict[str, Any] = {
        "device": _device_name(device),
        "dtype": args.dtype,
        "shapes": shapes,
        "step_ms": seconds * 1e3,
        "examples_per_s": batch / seconds,
        "flops_per_example_train": per_example,
        "tflops": achieved / 1e12,
        "peak_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "goal_mfu": GOAL_MFU if name.startswith(("wukong", "kunlun")) else None,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "compile": args.compile,
    }
    if args.modules:
        result["modules"] = module_profile(model, runner, device, batch, peak)
    return result


def module_profile(
    model: torch.nn.Module, step: Callable[[], None], device: torch.device, batch: int, peak: float | None
):  # noqa: ANN201
    """Per-module device time and MFU of a few steps (the trainer's ``--profile`` attribution)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from recscale.trainer.profile_groups import resolve_groups
    from recscale.trainer.profiling import RANGE_PREFIX, _range_hooks, add_rates, module_table

    breakdown = model.flops()
    rows, _ = resolve_groups(model, list(breakdown))
    named = dict(model.named_modules())
    handles = [h for r in rows for p in r.paths for h in _range_hooks(named[p], RANGE_PREFIX + r.group.name)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = 3
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    for h in handles:
        h.remove()
    table = module_table(prof.events(), rows, breakdown, device, steps, wall)
    add_rates(table, batch, peak)
    slowest = max(table["rows"], key=lambda r: r["forward_ms"] + r["backward_ms"], default=None)
    if slowest is not None:
        table["largest_module"] = {"module": slowest["module"], "mfu": slowest["mfu"]}
    return table


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from recscale.trainer.peaks import device_description

    return device_description(device)


def peak_for(device: torch.device, dtype: str) -> tuple[float | None, str]:
    """The dense peak (TFLOP/s) MFU divides by, and where it comes from."""
    from recscale.trainer.peaks import cpu_peak_tflops, gpu_peak_tflops

    if device.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), dtype)
        return peak, "vendor dense peak by device name" if peak else "unknown device: no MFU"
    return cpu_peak_tflops(dtype), "CPU matmul probe"


def document(results: dict[str, Any], device: torch.device, peak: float | None, source: str, args: Any) -> dict:
    """The ``mfu_gpu.json`` document (``recscale project --benchmark`` reads it)."""
    return {
        "benchmark": "mfu_gpu",
        "device": _device_name(device),
        "peak_tflops": peak,
        "peak_source": source,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tiny": args.tiny,
        "what": "dense arch forward + backward per step (no optimizer, no embedding lookups), CUDA events",
        "models": results,
    }


def summary_line(name: str, r: dict[str, Any]) -> str:
    """One model's result on one line."""
    util = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "unknown"
    return (
        f"{name:>14}: {r['step_ms']:9.3f} ms/step  {r['tflops']:8.2f} TFLOP/s  MFU {util}  batch {r['shapes']['batch']}"
    )


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"of {', '.join([*PRESET_MODELS, 'kunlun'])}")
    ap.add_argument("--batch", type=int, default=0, help="examples per step for every model (default: per model)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="torch.compile each model's forward")
    ap.add_argument("--modules", action="store_true", help="per-module time and MFU (torch.profiler)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mfu_gpu.json"))
    args = ap.parse_args()

    bootstrap()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n != "kunlun" and n not in PRESET_MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {', '.join([*PRESET_MODELS, 'kunlun'])}")
    peak, source = peak_for(device, args.dtype)
    results = {}
    for name in names:
        results[name] = measure(name, args, device, dtype, peak)
        print(summary_line(name, results[name]))
    path = Path(args.out)
    write_results(path, document(results, device, peak, source, args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
