"""Checkpoint save and load speed against the disk's own, and the training stall of an asynchronous save.

    .venv/bin/python benchmarks/checkpoint_io.py [--tables 8] [--rows 2000000] [--dim 64] [--rounds 3]

Two gloo ranks on CPU build a real sharded model (``parallelize``: TorchRec tables, fused
row-wise Adagrad, a small DCN-V2 dense part under DDP), train one step so the optimizer state
exists, save once asynchronously (allocating the host buffers: the *first* stall), and then, per round:

1. side by side (which pair goes first alternates between rounds): rank 0 writes one plain file as
   large as the checkpoint in 64 MiB blocks, fsyncs it, and reads it back cold (the disk's own
   sequential write and read rates); ``CheckpointManager.save`` (each rank writes its shards, hashing
   them as it writes; rank 0 writes the manifest and renames the directory into place), timed until
   every rank has returned, and ``CheckpointManager.load`` of it, cold, into the model, in place.
   Cold: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file after its fsync drops its clean pages
   from this machine's page cache (nothing else's). A virtual machine's host may still cache the
   disk; each read follows its own write, so the plain file and the checkpoint meet the same cache;
2. one training step, then an asynchronous save: the *stall* is the time until ``save`` returns on
   every rank (the copy of the state into the host buffers kept from the previous save); the main
   thread then computes (256² matmuls) until the files are written, against the same loop's rate with
   nothing written;
3. ``latest_valid`` on the cold checkpoint: every rank hashes its own files.

Ratios are taken per round (a pair measured side by side) and the median over rounds reported.
Targets (issue 14): save and load at least half the disk's rate; the async stall at most 10% of the
synchronous save. Writes ``benchmarks/results/checkpoint_io.json`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from results_io import write_results

from recscale.trainer.peaks import cpu_model

RESULTS = Path(__file__).parent / "results" / "checkpoint_io.json"
RANKS = 2
BLOCK = 64 << 20


def _config(tables: int, rows: int, dim: int, io_threads: int) -> Any:
    from recscale.configs import config_from_dict

    return config_from_dict(
        {
            "name": "checkpoint_io",
            "data": {
                "features": {
                    "labels": ["label"],
                    "dense": ["d0", "d1"],
                    "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(tables)],
                }
            },
            "embeddings": {"dim": dim, "tables": [{"name": f"t{i}", "num_embeddings": rows} for i in range(tables)]},
            "model": {"arch": "dcnv2", "dense_arch": [64, dim], "over_arch": [64], "dcnv2": {"num_cross_layers": 1}},
            "optimizer": {"dense": {"name": "adam", "lr": 0.001}, "sparse": {"name": "rowwise_adagrad", "lr": 0.01}},
            "trainer": {"batch_size": 64, "device": "cpu"},
            "checkpoint": {"keep_last": 100, "io_threads": io_threads},
        }
    )


def drop_cache(path: Path) -> None:
    """Drop a file's (clean) pages from the page cache, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_write(path: Path, size: int) -> None:
    """Write ``size`` bytes sequentially in 64 MiB blocks, fsync'd."""
    block = os.urandom(BLOCK)
    with open(path, "wb", buffering=0) as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(BLOCK, left)])
        os.fsync(f.fileno())


def disk_read(path: Path) -> None:
    """Read a file sequentially from the disk (its pages dropped from the cache first, untimed by the caller)."""
    buffer = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def _rank0_timed(rank: int, fn: Any, *args: Any) -> float:
    """Seconds rank 0 takes for ``fn(*args)`` (a plain file's cache dropped first), shared with every rank."""
    import torch.distributed as dist

    seconds = torch.zeros(1)
    if rank == 0:
        if args[0].exists():
            drop_cache(args[0])
        start = time.perf_counter()
        fn(*args)
        seconds[0] = time.perf_counter() - start
    dist.broadcast(seconds, 0)
    return float(seconds[0])


def _timed(fn: Any, *args: Any) -> float:
    """Seconds until every rank has finished ``fn(*args)`` (collective)."""
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    fn(*args)
    seconds = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds)


def _batch(cfg: Any, size: int, seed: int) -> Any:
    """Random ids (one per feature and example) and dense values matching ``cfg``'s features."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recscale.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    features = cfg.data.features
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    values = torch.cat([torch.randint(0, rows[f.table], (size,), generator=g) for f in features.sparse])
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in features.sparse],
        values=values,
        lengths=torch.ones(len(features.sparse) * size, dtype=torch.int64),
    )
    return Batch(
        dense=torch.randn(size, len(features.dense), generator=g),
        sparse=sparse,
        labels=(torch.rand(size, 1, generator=g) < 0.3).float(),
        weights=torch.ones(size),
    )


def _train_step(parallel: Any, cfg: Any, seed: int, rank: int) -> None:
    batch = _batch(cfg, cfg.trainer.batch_size // RANKS, seed * RANKS + rank)
    parallel.updater.zero_grad()
    loss, _ = parallel.model(batch)
    parallel.updater.backward(loss)
    parallel.updater.step()


def _busy_while(condition: Any, until: bool = True) -> int:
    """Matmuls of 256² until ``condition()`` is ``until``: what the main thread computes meanwhile."""
    a = torch.randn(256, 256)
    n = 0
    while condition() != until:
        a = torch.tanh(a @ a)
        n += 1
    return n


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from recscale.configs.schema import CheckpointConfig
    from recscale.modules.build import build_model
    from recscale.sharding.apply import parallelize
    from recscale.sharding.process_group import init_distributed
    from recscale.trainer.checkpoint import CheckpointManager

    info = init_distributed("cpu", 3600.0)
    cfg = _config(args.tables, args.rows, args.dim, args.io_threads)
    torch.manual_seed(0)
    parallel = parallelize(
        build_model(cfg, dense_device=info.device),
        cfg.sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=cfg.trainer.batch_size // world,
        total_steps=100,
        precision="fp32",
        aux_loss_weight=0.0,
    )
    _train_step(parallel, cfg, 0, rank)
    root = Path(args.dir)
    sync = CheckpointManager(root / "sync", cfg.checkpoint, rank, world)
    asynchronous = CheckpointManager(
        root / "async", CheckpointConfig(async_save=True, keep_last=100, io_threads=args.io_threads), rank, world
    )
    state = {"note": "benchmark"}

    # a first asynchronous save: its host buffers are allocated here (the cold stall); the checkpoint's size
    cold_stall = _timed(asynchronous.save, 0, parallel, state)
    asynchronous.wait()
    files = json.loads((root / "async" / "checkpoints" / "step_00000000" / "manifest.json").read_text())["files"]
    checkpoint_bytes = sum(f["bytes"] for f in files.values())

    plain = root / "plain.bin"
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        step = r + 1
        row: dict[str, Any] = {"round": r, "order": "plain file first" if r % 2 == 0 else "checkpoint first"}
        path = root / "sync" / "checkpoints" / f"step_{step:08d}"
        # the plain file (rank 0) written then read back, and a checkpoint saved then loaded, each read
        # straight after its own write (the pair that goes first alternates between rounds)
        for kind in ("disk", "checkpoint") if r % 2 == 0 else ("checkpoint", "disk"):
            if kind == "disk":
                row["disk_write_s"] = _rank0_timed(rank, disk_write, plain, checkpoint_bytes)
                row["disk_read_s"] = _rank0_timed(rank, disk_read, plain)
                if rank == 0:
                    plain.unlink()
            else:
                row["sync_save_s"] = _timed(sync.save, step, parallel, state)
                manifest = json.loads((path / "manifest.json").read_text())
                mine = [path / name for name, meta in manifest["files"].items() if meta["rank"] == rank]
                for file in mine:
                    drop_cache(file)
                row["load_s"] = _timed(sync.load, path, parallel)
        # the asynchronous save: the stall, then the main thread computes until the files are written
        _train_step(parallel, cfg, step, rank)
        row["async_stall_s"] = _timed(asynchronous.save, step, parallel, state)
        start = time.perf_counter()
        row["async_compute_iters"] = _busy_while(asynchronous.writing, False)
        asynchronous.wait()
        row["async_complete_s"] = row["async_stall_s"] + time.perf_counter() - start
        # verification as a resume does it (every rank hashes its own files)
        for file in mine:
            drop_cache(file)
        row["verify_s"] = _timed(sync.latest_valid)
        row["checkpoint_bytes"] = sum(m["bytes"] for m in manifest["files"].values())
        row["files"] = len(manifest["files"])
        rows.append(row)
        dist.barrier()
        if rank == 0:  # untimed, so no deletion overlaps a measurement
            for kind in ("sync", "async"):
                for old in (root / kind / "checkpoints").glob("step_*"):
                    shutil.rmtree(old)
        dist.barrier()
    # the same busy loop with nothing written in the background, for the async row's compute rate
    start = time.perf_counter()
    deadline = start + statistics.median(r["async_complete_s"] - r["async_stall_s"] for r in rows)
    idle_iters = _busy_while(lambda: time.perf_counter() >= deadline)
    if rank == 0:
        Path(out).write_text(
            json.dumps({"rows": rows, "bytes": checkpoint_bytes, "idle_iters": idle_iters, "cold": cold_stall})
        )
    dist.barrier()
    asynchronous.close()
    from recscale.sharding.process_group import shutdown_distributed

    shutdown_distributed()


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    """Run both ranks, summarise, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--io-threads", type=int, default=1)
    parser.add_argument("--dir", default="/tmp/recscale_checkpoint_io")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    load_before = os.getloadavg()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    part = root / "rank0.json"
    mp.spawn(_worker, args=(RANKS, port, args, str(part)), nprocs=RANKS, join=True)
    got = json.loads(part.read_text())
    rows = got["rows"]
    gb = got["bytes"] / 1e9
    disk_write, disk_read = gb / _median(rows, "disk_write_s"), gb / _median(rows, "disk_read_s")
    save, load = gb / _median(rows, "sync_save_s"), gb / _median(rows, "load_s")
    save_ratio = statistics.median(r["disk_write_s"] / r["sync_save_s"] for r in rows)  # paired, per round
    load_ratio = statistics.median(r["disk_read_s"] / r["load_s"] for r in rows)
    stall = statistics.median(r["async_stall_s"] / r["sync_save_s"] for r in rows)
    compute_while_writing = statistics.median(r["async_compute_iters"] for r in rows) / max(got["idle_iters"], 1)
    total, used, free = shutil.disk_usage(root)
    result = {
        "benchmark": "Checkpoint I/O: save and load rates vs the disk's own, async save stall vs sync save",
        "setup": {
            "ranks": RANKS,
            "backend": "gloo (CPU), 1 thread per rank",
            "model": f"{args.tables} tables x {args.rows:,} rows x dim {args.dim} fp32 (TorchRec, fused row-wise "
            "Adagrad), DCN-V2 dense part under DDP with Adam",
            "checkpoint_gb": round(gb, 3),
            "checkpoint_files": rows[0]["files"],
            "io_threads_per_rank": args.io_threads,
            "rounds": args.rounds,
            "order": "per round: plain file write + read and checkpoint save + load side by side (the plain "
            "file first in even rounds, the checkpoint first in odd ones), then the async save, then "
            "verification; ratios are per round (paired), then the median over rounds",
            "page_cache": "posix_fadvise(POSIX_FADV_DONTNEED) on every file before each read (after fsync); "
            "the VM's host may still cache the virtual disk: each read follows its own write, so the plain "
            "file and the checkpoint meet the same host cache",
        },
        "results": {
            "disk_write_gb_s": round(disk_write, 3),
            "disk_read_gb_s": round(disk_read, 3),
            "save_gb_s": round(save, 3),
            "load_gb_s": round(load, 3),
            "save_vs_disk_write": round(save_ratio, 3),
            "load_vs_disk_read": round(load_ratio, 3),
            "sync_save_s": round(_median(rows, "sync_save_s"), 3),
            "async_stall_s": round(_median(rows, "async_stall_s"), 3),
            "async_stall_vs_sync_save": round(stall, 4),
            "async_stall_first_save_s": round(got["cold"], 3),
            "async_complete_s": round(_median(rows, "async_complete_s"), 3),
            "compute_rate_while_async_write_vs_idle": round(compute_while_writing, 3),
            "load_s": round(_median(rows, "load_s"), 3),
            "verify_s": round(_median(rows, "verify_s"), 3),
            "verify_gb_s": round(gb / _median(rows, "verify_s"), 3),
        },
        "targets": {
            "save_vs_disk_write >= 0.5": save_ratio >= 0.5,
            "load_vs_disk_read >= 0.5": load_ratio >= 0.5,
            "async_stall_vs_sync_save <= 0.1": stall <= 0.1,
        },
        "rounds": rows,
        "machine": {
            "host": platform.node(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "memory_available_gb_at_start": _available_gb(),
            "disk": _disk(root),
            "disk_free_gb": round(free / 1e9, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "note": "shared machine; other jobs may have run at the same time: compare ratios, not absolute times",
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result["results"], indent=2))
    print(json.dumps(result["targets"], indent=2))
    write_results(args.out, result)


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return 0.0


def _disk(path: Path) -> str:
    """The device and file system ``path`` lives on (``/proc/mounts``)."""
    best = ("", "", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fs = line.split()[:3]
        if str(path.resolve()).startswith(mount) and len(mount) > len(best[1]):
            best = (device, mount, fs)
    return f"{best[0]} ({best[2]}, mounted at {best[1]})"


if __name__ == "__main__":
    main()
