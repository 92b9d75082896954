"""Expert-parallel token exchange: dropless (split sizes) against DeepSpeed's capacity-padded buffers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moe_dispatch.py [--rounds 20]

Two gloo ranks on this machine, ep_size 2. One HiLoMoE block (I = O = 256, K = 8 experts per layer,
top-2 routing, L MoE layers, 1,024 tokens per rank) runs forward + backward on each rank's tokens in
these variants, built from one reference block (same weights, same routes):

- ``dropless``: ``sharding.moe.exchange: dropless`` (one round for all L layers): each route's x
  ``[I]`` to its expert's rank, ``(v·x) u`` ``[O]`` back, with split sizes; nothing padded or dropped;
- ``padded f=0``: DeepSpeed's ``MOELayer`` with ``capacity_factor: 0`` (capacity = tokens per rank:
  nothing dropped), the ``[E, C, M]`` buffers of the issue, M = max(I, O);
- ``padded f=1.25``: the same with capacity 1.25 x the even share (routes beyond it are dropped);
- ``dropless per_layer``: one dropless round per MoE layer (L rounds), against one round.

Variants alternate within every round (machine noise hits all alike). Reported per variant: bytes
every rank hands to ``all_to_all_single`` per step (the count exchange included), the part of them
addressed to the other rank (what crosses the wire), calls per step, median / p10 / p90 ms per step,
and against ``padded f=0``: the byte ratio and the median over rounds of the per-round time ratio.
The machine's load average is recorded before and after.

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
LAYERS = [2, 4]
WIDTH, EXPERTS, TOP_K, TOKENS, RANKS = 256, 8, 2, 1024, 2
VARIANTS = {  # name: (dispatch, exchange, capacity_factor)
    "dropless": ("one_round", "dropless", 0.0),
    "padded f=0": ("one_round", "padded", 0.0),
    "padded f=1.25": ("one_round", "padded", 1.25),
    "dropless per_layer": ("per_layer", "dropless", 0.0),
}
BASELINE = "padded f=0"


def _step(block: torch.nn.Module, x: torch.Tensor, counter: dict[str, int]) -> tuple[float, dict[str, int]]:
    import torch.distributed as dist

    counter.update(calls=0, bytes=0, off_rank=0)
    dist.barrier()
    start = time.perf_counter()
    y = block(x)
    (y.square().mean() + block.last_aux.total).backward()
    dist.barrier()
    return (time.perf_counter() - start) * 1e3, dict(counter)


def _worker(rank: int, world: int, port: int, rounds: int, out: str) -> None:
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
    counter = {"calls": 0, "bytes": 0, "off_rank": 0}
    original = dist.all_to_all_single

    def counted(output: torch.Tensor, input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Count the bytes handed to the collective, and those addressed to other ranks."""
        splits = kwargs.get("input_split_sizes", args[1] if len(args) > 1 else None)
        row = input[0].numel() * input.element_size() if input.dim() and len(input) else 0
        total = input.numel() * input.element_size()
        mine = splits[rank] * row if splits else total // world
        counter["calls"] += 1
        counter["bytes"] += total
        counter["off_rank"] += total - mine
        return original(output, input, *args, **kwargs)

    dist.all_to_all_single = counted
    results = []
    for num_layers in LAYERS:
        torch.manual_seed(0)
        reference = HiLoMoELinear(
            WIDTH, WIDTH, num_experts=EXPERTS, num_layers=num_layers, routing="topk", top_k=TOP_K, expert_init_std=0.1
        )
        blocks = {}
        for name, (dispatch, exchange, factor) in VARIANTS.items():
            cfg = MoEParallelConfig(dispatch=dispatch, exchange=exchange, capacity_factor=factor)
            block = DeepSpeedHiLoMoELinear.from_reference(copy.deepcopy(reference), RANKS, rank, cfg)
            for m in block.modules():
                if isinstance(m, MoE):
                    m.set_deepspeed_parallelism()
            blocks[name] = block
        x = torch.randn(TOKENS, WIDTH, generator=torch.Generator().manual_seed(rank))
        times: dict[str, list[float]] = {name: [] for name in blocks}
        comms: dict[str, dict[str, int]] = {}
        for i in range(rounds + 3):
            order = list(blocks) if i % 2 == 0 else list(reversed(blocks))  # alternate who goes first
            for name in order:
                ms, counts = _step(blocks[name], x, counter)
                if i >= 3:  # warm-up
                    times[name].append(ms)
                comms[name] = counts
        for name, samples in times.items():
            q = statistics.quantiles(samples, n=10)
            ratios = [b / s for b, s in zip(times[BASELINE], samples)]
            results.append(
                {
                    "moe_layers": num_layers,
                    "variant": name,
                    "dispatch": VARIANTS[name][0],
                    "exchange": VARIANTS[name][1],
                    "capacity_factor": VARIANTS[name][2],
                    "rank": rank,
                    "all_to_all_calls_per_step": comms[name]["calls"],
                    "all_to_all_bytes_per_step": comms[name]["bytes"],
                    "off_rank_bytes_per_step": comms[name]["off_rank"],
                    "ms_per_step_median": round(statistics.median(samples), 3),
                    "ms_per_step_p10": round(q[0], 3),
                    "ms_per_step_p90": round(q[-1], 3),
                    f"speedup_vs_{BASELINE.replace(' ', '_')}": round(statistics.median(ratios), 3),
                }
            )
    Path(out).with_suffix(f".rank{rank}.tmp").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    """Run both ranks for every setting; write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # the ranks hand their rows over beside it
    load_before = os.getloadavg()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(RANKS, port, args.rounds, str(out)), nprocs=RANKS, join=True)
    per_rank = []
    for rank in range(RANKS):
        part = out.with_suffix(f".rank{rank}.tmp")
        per_rank.append(json.loads(part.read_text()))
        part.unlink()
    rows = []
    for mine, other in zip(*per_rank):  # rank 0's row, with rank 1's bytes beside it (routes differ by rank)
        base = next(r for r in per_rank[0] if r["moe_layers"] == mine["moe_layers"] and r["variant"] == BASELINE)
        rows.append(
            {
                **{k: v for k, v in mine.items() if k != "rank"},
                "all_to_all_bytes_per_step_rank1": other["all_to_all_bytes_per_step"],
                "bytes_vs_padded_f0": round(mine["all_to_all_bytes_per_step"] / base["all_to_all_bytes_per_step"], 4),
            }
        )
    import deepspeed

    result = {
        "benchmark": "Expert-parallel token exchange: dropless (split sizes) vs DeepSpeed's capacity-padded buffers",
        "setup": {
            "ranks": RANKS,
            "ep_size": RANKS,
            "backend": "gloo (CPU)",
            "block": {"in": WIDTH, "out": WIDTH, "experts_per_layer": EXPERTS, "routing": f"top-{TOP_K}"},
            "tokens_per_rank": TOKENS,
            "measured": "forward + backward of one HiLoMoE block (no optimizer), variants alternating each round",
            "rounds": args.rounds,
            "bytes": "handed to all_to_all_single per step on rank 0 (count exchange included); "
            "off_rank = the part addressed to the other rank",
        },
        "machine": {
            "host": platform.node(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads_per_rank": 1,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "note": "shared machine; other jobs may have run at the same time: compare ratios, not absolute times",
        },
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    write_results(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
