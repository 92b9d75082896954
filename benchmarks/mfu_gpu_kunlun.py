"""MFU of a Kunlun layer stack, forward + backward, in bf16 (plain torch: no TorchRec needed).

    python benchmarks/mfu_gpu_kunlun.py                        # CUDA, production-like shapes, bf16
    python benchmarks/mfu_gpu_kunlun.py --batch 512 --window 256 --backend flex
    python benchmarks/mfu_gpu_kunlun.py --device cpu --tiny    # smoke test of the script itself

The model is ``KunlunDense`` (non-sequence tokens, X_sum, per-event GDPA / SWA / HSP with CompSkip,
mixture of Wukong experts, head) at sequence length 1,000 and width 256 by default. Inputs are the
dense arch's: padded sequence embeddings, masks, pooled sparse embeddings (the embedding lookups are
not part of the measured stack: they are memory traffic, not FLOPs). Timing uses CUDA events around whole training
steps (forward, backward, no optimizer) after warm-up. MFU = model FLOPs per example (analytic,
``KunlunDense.flops``) x examples/s / the device's dense bf16 peak; the "executed" figure counts what
the kernels really run (a window mask under SDPA still computes every pair). Each module kind is
also timed on its own (same shapes, forward + backward) for the per-module breakdown.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from kunlun_common import PRODUCTION, TINY, Shapes, bootstrap, build_dense
from results_io import write_results

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0, "GB200": 2500.0}
"""Dense bf16 peaks (SXM parts; an H100 PCIe is 756)."""


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s of the device and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name and "PCIe" in name:
            return 756e12, f"{name}: H100 PCIe dense bf16 peak"
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name}: {key} dense bf16 peak"
        return float("nan"), f"{name}: unknown peak"
    return matmul_probe(device, dtype), "CPU: measured by a matmul probe"


def matmul_probe(device: torch.device, dtype: torch.dtype, n: int = 512, seconds: float = 0.5) -> float:
    """Sustained matmul FLOP/s on this device (the CPU 'peak')."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def timed(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


def make_inputs(shapes: Shapes, batch: int, device: torch.device, dtype: torch.dtype, fill: float) -> dict[str, Any]:
    """Dense-arch inputs: right-aligned sequences with lengths in [fill * L, L]."""
    g = torch.Generator(device="cpu").manual_seed(0)
    length = shapes.seq_len
    n = torch.randint(int(fill * length), length + 1, (batch,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) >= (length - n).unsqueeze(1)).to(device)
    times = (1_700_000_000 + torch.cumsum(torch.randint(1, 3600, (batch, length), generator=g), 1)).to(device)
    return {
        "dense": torch.randn(batch, shapes.num_dense, device=device, dtype=dtype),
        "pooled": torch.randn(batch, shapes.num_sparse * shapes.dim, device=device, dtype=dtype, requires_grad=True),
        "sequences": {"events": torch.randn(batch, length, shapes.dim, device=device, requires_grad=True)},
        "masks": {"events": mask},
        "timestamps": {"events": times * mask},
    }


def train_step(model: torch.nn.Module, inputs: dict[str, Any]) -> Callable[[], None]:
    """One forward + backward of the whole stack (gradients are discarded, no optimizer)."""

    def step() -> None:
        logits, aux, _ = model(**inputs)
        (logits.float().sum() + aux.float()).backward()

    return step


def module_steps(model: torch.nn.Module, shapes: Shapes, batch: int, device: torch.device, dtype: torch.dtype):  # noqa: ANN201
    """(name, callable, per-example FLOPs) for each module kind of layer 0/1, on random inputs of its shapes."""
    stack = model.stacks["events"]
    length, d = shapes.seq_len, shapes.dim
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    s, xsum = rand(batch, length, d), rand(batch, shapes.num_sum_tokens, d)
    tokens = rand(batch, model.tokens.num_tokens, d)
    mixed = rand(batch, model.interaction[0].num_in, d)
    out = []

    def fb(fn: Callable[[], Any]) -> Callable[[], None]:
        def step() -> None:
            y = fn()
            y = y[0] if isinstance(y, tuple) else y
            y.float().sum().backward()

        return step

    if "0" in stack.gdpa:
        out.append(("gdpa", fb(lambda: stack.gdpa["0"](s, xsum, mask)), stack.gdpa["0"].flops(length)))
    key = next(iter(stack.swa)) if len(stack.swa) else None
    if key is not None:
        m = stack.swa[key]
        out.append(("swa", fb(lambda: m(s, mask, None)), m.flops(length)))
    if "0" in stack.hsp:
        out.append(("hsp", fb(lambda: stack.hsp["0"](s, mask)), stack.hsp["0"].flops(length)))
    out.append(("xsum", fb(lambda: model.xsum[0](tokens)), model.xsum[0].flops()))
    out.append(("mowe", fb(lambda: model.interaction[0](mixed)), model.interaction[0].flops()))
    return out


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--batch", type=int, default=0, help="examples per step (default 256; 8 with --tiny)")
    ap.add_argument("--seq-len", type=int, default=0, help="override the sequence length")
    ap.add_argument("--dim", type=int, default=0, help="override the width")
    ap.add_argument("--layers", type=int, default=0, help="override the number of Kunlun layers")
    ap.add_argument("--window", type=int, default=0, help="SWA half width (0 = full attention)")
    ap.add_argument("--no-compskip", action="store_true", help="every layer runs GDPA + SWA + HSP")
    ap.add_argument("--backend", default="sdpa", choices=["sdpa", "flex", "reference"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--fill", type=float, default=1.0, help="real events per sequence, as a fraction of L (min)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the whole stack")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--no-modules", action="store_true", help="skip the per-module timings")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mfu_gpu_kunlun.json"))
    args = ap.parse_args()

    bootstrap()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    base = TINY if args.tiny else PRODUCTION
    overrides = {k: v for k, v in {"seq_len": args.seq_len, "dim": args.dim, "num_layers": args.layers}.items() if v}
    shapes = Shapes(**{**base.__dict__, **overrides})
    batch = args.batch or (8 if args.tiny else 256)
    warmup = args.warmup or (1 if args.tiny else 3)
    iters = args.iters or (2 if args.tiny else 10)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    with torch.device(device):
        model = build_dense(shapes, window=args.window, compskip=not args.no_compskip, backend=args.backend)
    model = model.to(dtype)
    flops = model.flops()
    executed = model.flops(executed=True)
    inputs = make_inputs(shapes, batch, device, dtype, args.fill)
    runner = torch.compile(model) if args.compile else model
    step_s = timed(train_step(runner, inputs), device, warmup, iters)
    peak, peak_source = device_peak(device, dtype)
    per_example = sum(c.train for c in flops.values())
    per_example_exec = sum(c.train for c in executed.values())
    achieved = per_example * batch / step_s

    modules = []
    if not args.no_modules:
        for name, step, count in module_steps(model, shapes, batch, device, dtype):
            seconds = timed(step, device, warmup, iters)
            rate = count.train * batch / seconds
            modules.append(
                {"module": name, "ms": round(seconds * 1e3, 4), "tflops": round(rate / 1e12, 3), "mfu": rate / peak}
            )

    result = {
        "benchmark": "mfu_gpu_kunlun",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "backend": args.backend,
        "compile": args.compile,
        "shapes": {**shapes.as_dict(), "batch": batch, "window": args.window, "compskip": not args.no_compskip},
        "fill": args.fill,
        "step_ms": round(step_s * 1e3, 4),
        "examples_per_s": batch / step_s,
        "model_flops_per_example": per_example,
        "executed_flops_per_example": per_example_exec,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak,
        "executed_mfu": per_example_exec * batch / step_s / peak,
        "goal_mfu": 0.40,
        "flops_breakdown_gflops": {k: round(v.train / 1e9, 6) for k, v in flops.items()},
        "modules": modules,
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "tiny": args.tiny,
    }
    out = Path(args.out)
    write_results(out, result)
    print(json.dumps({k: result[k] for k in ("device", "step_ms", "achieved_tflops", "mfu", "executed_mfu")}, indent=2))
    for m in modules:
        print(f"  {m['module']:>6}: {m['ms']:9.3f} ms  {m['tflops']:8.2f} TFLOP/s  MFU {m['mfu']:.1%}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
