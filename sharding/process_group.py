"""Process-group set-up and shutdown: the backend for the device, a timeout so a stuck rank fails, not hangs."""

from __future__ import annotations

import gc
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from recscale.sharding.topology import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    host_ranks: int = 1
    """Ranks of the job on this machine, however they were launched (``launch -j 2x1`` on one machine: 2)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 writes shared files (metrics, summary, report)."""
        return self.rank == 0


FLIGHT_RECORDER_DIR = "flight_recorder"
"""Where, under the run directory, each rank dumps its NCCL flight recorder when a collective times out."""

FLIGHT_RECORDER_ENTRIES = 2000
"""Collectives each rank remembers (a ring buffer of their sequence numbers, sizes, state and stacks)."""


def flight_recorder_env(run_dir: Path) -> dict[str, str]:
    """The environment that turns PyTorch's NCCL flight recorder on for a GPU run.

    Every rank records its last ``FLIGHT_RECORDER_ENTRIES`` collectives; when one times out
    (``trainer.collective_timeout_s``) NCCL's watchdog dumps them to
    ``<run_dir>/flight_recorder/rank_<r>``, and ``python -m torch.distributed.flight_recorder.fr_trace``
    on that folder names the rank that did not join and the collective it missed (docs/launch.md).
    """
    return {
        "TORCH_NCCL_TRACE_BUFFER_SIZE": str(FLIGHT_RECORDER_ENTRIES),
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(Path(run_dir) / FLIGHT_RECORDER_DIR / "rank_"),
    }


def enable_flight_recorder(run_dir: Path) -> None:
    """Set ``flight_recorder_env`` (values the user set already win) and make its folder; before NCCL starts."""
    (Path(run_dir) / FLIGHT_RECORDER_DIR).mkdir(parents=True, exist_ok=True)
    for key, value in flight_recorder_env(run_dir).items():
        os.environ.setdefault(key, value)


def init_distributed(device: str = "auto", timeout_s: float = 600.0, run_dir: Path | None = None) -> DistInfo:
    """Join the job's process group (torchrun's environment), or make a one-rank group without it.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        timeout_s: collective timeout; a rank stuck longer fails the job with an error.
        run_dir: the run directory; on GPU runs the NCCL flight recorder dumps there (``enable_flight_recorder``).
    """
    if "RANK" not in os.environ:  # a plain `python` process: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    kind = resolve_device(device)
    if kind == "cuda":
        if run_dir is not None and not dist.is_initialized():
            enable_flight_recorder(run_dir)
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if kind == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if kind == "cuda" else None,
        )
    _set_host_group(timeout_s)
    host_ranks = ranks_on_this_host()
    if kind == "cpu" and os.environ.get(SHARE_CORES) == "1":
        share_cores(host_ranks)
    return DistInfo(rank, world_size, local_rank, local_world_size, dev, host_ranks)


SHARE_CORES = "RECSCALE_SHARE_CORES"
"""Set to 1 by recscale's launchers when they chose the thread count (the user set no OMP_NUM_THREADS):
the ranks on one machine then split its cores between them, however many "nodes" they were launched as."""


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ranks_on_this_host() -> int:
    """How many ranks of the job run on this machine (by host name; collective, every rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 1
    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname(), group=host_group())
    return names.count(socket.gethostname())


def share_cores(host_ranks: int) -> None:
    """Give this rank its share of the machine's cores: ``available_cpus() // host_ranks`` threads (at least 1).

    ``launch -j 2x1`` on one machine starts two one-rank "nodes", each of which would otherwise take
    every core: 2 ranks x 2 threads on 2 cores ran 4.7x slower than ``train --nproc 2``.
    """
    threads = max(1, available_cpus() // host_ranks)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


_HOST_GROUP: dist.ProcessGroup | None = None


def host_group() -> dist.ProcessGroup | None:
    """The group for the trainer's small collectives on CPU tensors (flags, counts, plan digests, eval scores).

    NCCL moves CUDA tensors only: a CPU tensor on an NCCL default group fails with "No backend type
    associated with device type cpu". On GPU runs this is a gloo group over the same ranks, made once
    by ``init_distributed``; on CPU runs None, i.e. the (gloo) default group.
    """
    return _HOST_GROUP


def _set_host_group(timeout_s: float) -> None:
    """Make the gloo side group when the default group cannot move CPU tensors (collective: every rank)."""
    global _HOST_GROUP
    _HOST_GROUP = None
    if "gloo" not in str(dist.get_backend()):  # "nccl"; "cpu:gloo,cuda:nccl" would already do CPU
        _HOST_GROUP = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def shutdown_distributed() -> None:
    """Leave the process group at the end of a successful run, before the interpreter exits.

    A process that exits with its group alive can abort with "terminate called without an active
    exception" (pytorch#190489): the backend's threads outlive the interpreter and touch Python
    objects during finalisation. Unreachable objects that hold the group (sharded modules, DeepSpeed
    engines) are collected first, then every group is destroyed while the interpreter is whole. Not
    called after a failure: a rank whose peers are still inside a collective would wait here
    (torchtitan makes the same choice).
    """
    gc.collect()
    global _HOST_GROUP
    _HOST_GROUP = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (a MIN all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=host_group())
    return bool(t.item())


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all ranks (a SUM all-reduce, then 1/world; not differentiable)."""
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def deepspeed_environment() -> None:
    """Settings DeepSpeed reads from the environment, set (unless the user did) before it initialises.

    ``DS_ACCELERATOR``: CUDA when there is a GPU, else CPU. ``TORCH_EXTENSIONS_DIR``: any op DeepSpeed
    JIT-compiles goes under this Python environment, not the shared ``~/.cache/torch_extensions``,
    where a second checkout's processes would rebuild the ``.so`` (its sources live at another path)
    while this one's ranks load it. The one op its start-up would compile on CPU is skipped
    (``skip_shared_memory_op``).
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    skip_shared_memory_op()


SHM_OP = "deepspeed_shm_comm"
"""DeepSpeed's CPU shared-memory all-reduce op, which its communication backend JIT-compiles at start-up."""


def skip_shared_memory_op() -> None:
    """Tell DeepSpeed its CPU shared-memory op is unavailable, so it is never compiled.

    DeepSpeed's CPU backend compiles ``deepspeed_shm_comm`` (about a minute on two cores, once per
    Python environment) when its communication starts, but uses it only in ``inference_all_reduce``,
    which recscale never calls: training collectives go through ``torch.distributed`` either way.
    The switch is DeepSpeed's table of compatible ops (``deepspeed.ops.__compatible_ops__``, a
    module-level dict DeepSpeed builds once and keeps edits to; no public API exists);
    ``tests/sharding/test_deepspeed_private.py`` fails naming it if that changes.
    """
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible[SHM_OP] = False
