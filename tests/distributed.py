"""Run a function on N CPU ranks (gloo) in fresh processes and collect what each rank returns.

Modelled on TorchRec's ``MultiProcessTestBase``: spawned processes, a free port, deterministic
algorithms, one process group per run. Failures come back as the failing rank's traceback, and a
run that hangs is killed after ``timeout_s`` instead of hanging the test suite.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
    )
    import torch
    import torch.distributed as dist

    faulthandler.enable(all_threads=True)  # a rank killed by a signal prints every thread's stack
    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
        result = {"ok": True, "value": fn(rank, world_size, *args)}
    except BaseException as err:  # noqa: BLE001 - reported to the parent test
        result = {"ok": False, "error": f"rank {rank}: {type(err).__name__}: {err}\n{traceback.format_exc()}"}
    finally:
        from recscale.sharding.process_group import shutdown_distributed

        shutdown_distributed()
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


PRELOAD = ["torch", "torch.distributed", "torchrec", "deepspeed", "recscale.trainer.loop", "recscale.launch.commands"]
"""Modules the fork server imports once, so that every rank it forks starts with them loaded (about 5 s
of imports per rank saved; the server imports nothing else and starts no thread, so forking it is safe)."""


def _start_forkserver() -> None:
    """Start the suite's fork server (once) with ``PRELOAD`` imported; ranks are forked from it."""
    from multiprocessing import forkserver

    if getattr(_start_forkserver, "started", False):
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read by DeepSpeed at import, in the server
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    _start_forkserver.started = True  # type: ignore[attr-defined]


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 300.0) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return each rank's result.

    ``fn`` must be a module-level function (it is pickled into the child processes).

    Raises:
        AssertionError: a rank raised (its traceback is in the message) or the run timed out.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        _start_forkserver()
        ctx = mp.start_processes(
            _worker,
            args=(world_size, free_port(), out_dir, fn, args),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        import time

        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        if p.is_alive():
                            p.kill()
                    raise AssertionError(f"distributed run of {fn.__name__} timed out after {timeout_s} s")
        except mp.ProcessExitedException as err:
            written = [r for r in range(world_size) if (Path(out_dir) / f"rank{r}.pkl").exists()]
            raise AssertionError(
                f"{fn.__name__}: {err} (ranks that had written their result: {written or 'none'})"
            ) from err
        results = []
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pkl"
            if not path.exists():
                raise AssertionError(f"rank {rank} of {fn.__name__} died without a result")
            results.append(pickle.loads(path.read_bytes()))
    errors = [r["error"] for r in results if not r["ok"]]
    if errors:
        raise AssertionError("\n".join(errors))
    return [r["value"] for r in results]
