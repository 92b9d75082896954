"""HiLoMoE under DeepSpeed expert parallelism: one all-to-all round for all L layers vs one per layer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moe_dispatch.py [--steps 30]

Two gloo ranks on this machine, ep_size 2. For each setting, one ``DeepSpeedHiLoMoELinear`` block
(I = O = 256, K = 8 experts per layer, top-2 routing) runs forward + backward on its rank's tokens
with ``dispatch: one_round`` and ``dispatch: per_layer``, interleaved step by step so machine noise
hits both alike. Reported per setting: median / p10 / p90 milliseconds per step, all-to-all calls
and bytes per rank per step (counted by wrapping ``torch.distributed.all_to_all_single``), and the
reference block (no expert parallelism, all experts local) for the compute-only cost, and both
DeepSpeed variants at ep_size 1 (the same dispatch buffers, no all-to-all) to separate the cost of
DeepSpeed's dispatch and combine from the cost of the communication.

Everything runs twice: with glibc's default allocator settings, where a buffer above the dynamic
mmap threshold (32 MiB at most) is mapped and unmapped on every step, and with
``MALLOC_MMAP_THRESHOLD_=4294967295``, which keeps big buffers on the heap (as a GPU caching
allocator would). One-round dispatch makes L-times bigger buffers, so the difference matters.

Writes ``benchmarks/results/moe_dispatch.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from results_io import write_results

from recscale.trainer.peaks import cpu_model

RESULTS = Path(__file__).parent / "results" / "moe_dispatch.json"
SETTINGS = [  # (MoE layers L, capacity factor; 0 = capacity = all tokens, nothing dropped)
    (2, 1.25),
    (4, 1.25),
    (8, 1.25),
    (4, 0.0),
]
WIDTH, EXPERTS, TOP_K, TOKENS = 256, 8, 2, 1024


def _time_step(block: torch.nn.Module, x: torch.Tensor, counter: dict[str, int]) -> tuple[float, int, int]:
    import torch.distributed as dist

    counter["calls"] = counter["bytes"] = 0
    dist.barrier()
    start = time.perf_counter()
    y = block(x)
    (y.square().mean() + block.last_aux.total).backward()
    dist.barrier()
    return (time.perf_counter() - start) * 1e3, counter["calls"], counter["bytes"]


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from deepspeed.moe.layer import MoE

    from recscale.configs.schema import MoEParallelConfig
    from recscale.modules.hilomoe import HiLoMoELinear
    from recscale.sharding.expert_parallel import DeepSpeedHiLoMoELinear

    deepspeed.init_distributed(dist_backend="gloo")
    counter = {"calls": 0, "bytes": 0}
    original = dist.all_to_all_single

    def counted(output: torch.Tensor, input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter["calls"] += 1
        counter["bytes"] += input.numel() * input.element_size()
        return original(output, input, *args, **kwargs)

    dist.all_to_all_single = counted
    results = []
    for num_layers, capacity_factor in SETTINGS:
        torch.manual_seed(0)
        reference = HiLoMoELinear(
            WIDTH, WIDTH, num_experts=EXPERTS, num_layers=num_layers, routing="topk", top_k=TOP_K, expert_init_std=0.1
        )
        blocks = {}
        for ep_size in (2, 1):
            for dispatch in ("one_round", "per_layer"):
                cfg = MoEParallelConfig(dispatch=dispatch, capacity_factor=capacity_factor)
                block = DeepSpeedHiLoMoELinear.from_reference(copy.deepcopy(reference), ep_size, rank % ep_size, cfg)
                for m in block.modules():
                    if isinstance(m, MoE):
                        m.set_deepspeed_parallelism()
                blocks[dispatch if ep_size == 2 else f"{dispatch}, ep_size 1 (no all-to-all)"] = block
        blocks["reference (no EP)"] = reference
        x = torch.randn(TOKENS, WIDTH, generator=torch.Generator().manual_seed(rank))
        times: dict[str, list[float]] = {name: [] for name in blocks}
        comms: dict[str, tuple[int, int]] = {}
        for step in range(steps + 3):
            for name, block in blocks.items():
                ms, calls, nbytes = _time_step(block, x, counter)
                if step >= 3:  # warm-up
                    times[name].append(ms)
                comms[name] = (calls, nbytes)
        for name, samples in times.items():
            q = statistics.quantiles(samples, n=10)
            results.append(
                {
                    "moe_layers": num_layers,
                    "capacity_factor": capacity_factor,
                    "variant": name,
                    "ms_per_step_median": round(statistics.median(samples), 3),
                    "ms_per_step_p10": round(q[0], 3),
                    "ms_per_step_p90": round(q[-1], 3),
                    "all_to_all_calls_per_step": comms[name][0],
                    "all_to_all_bytes_per_rank_per_step": comms[name][1],
                }
            )
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _run(steps: int, tmp: Path, mmap_threshold: str) -> list[dict[str, Any]]:
    """Both ranks for every setting, with glibc's mmap threshold set (or its default when empty)."""
    if mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = mmap_threshold  # read by each fresh worker process
    else:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, steps, str(tmp)), nprocs=2, join=True)
    rows: list[dict[str, Any]] = json.loads(tmp.read_text())
    tmp.unlink()
    for row in rows:
        row["malloc_mmap_threshold"] = mmap_threshold or "glibc default (dynamic, up to 32 MiB)"
        if row["variant"] == "one_round":
            per_layer = next(
                r
                for r in rows
                if r["variant"] == "per_layer"
                and r["moe_layers"] == row["moe_layers"]
                and r["capacity_factor"] == row["capacity_factor"]
            )
            row["speedup_vs_per_layer"] = round(per_layer["ms_per_step_median"] / row["ms_per_step_median"], 3)
    return rows


def main() -> None:
    """Run the two ranks (default allocator, then large buffers kept on the heap); write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # rank 0 hands its rows over beside it
    tmp = Path(args.out).with_suffix(".rank0.tmp")
    rows = _run(args.steps, tmp, "") + _run(args.steps, tmp, "4294967295")
    import deepspeed

    result = {
        "benchmark": "HiLoMoE expert-parallel dispatch: one all-to-all round for all L layers vs one per layer",
        "setup": {
            "ranks": 2,
            "ep_size": 2,
            "backend": "gloo (CPU)",
            "block": {"in": WIDTH, "out": WIDTH, "experts_per_layer": EXPERTS, "routing": f"top-{TOP_K}"},
            "tokens_per_rank": TOKENS,
            "measured": "forward + backward of one block (no optimizer), median of interleaved steps",
            "steps": args.steps,
        },
        "machine": {
            "host": platform.node(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads_per_rank": 1,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "note": "shared 2-core machine; other jobs may have run at the same time",
        },
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    out = Path(args.out)
    write_results(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
