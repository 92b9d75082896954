"""Run a job's ranks on this machine with torchrun (``python -m torch.distributed.run``).

The command line is a list of arguments, never a shell string, so nothing in a config can inject
shell syntax. torchrun writes every rank's stdout/stderr under ``<run_dir>/logs``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recscale.launch.console import run_filtered
from recscale.launch.entrypoint import VERBOSE
from recscale.launch.failures import failure_line
from recscale.trainer.progress import PROGRESS_LINES
from recscale.trainer.run_dir import LOGS


def worker_env(nproc: int, verbose: bool = False) -> dict[str, str]:
    """Environment of the ranks: threads split between local ranks, DeepSpeed's accelerator, verbosity."""
    env = dict(os.environ)
    if verbose:
        env[VERBOSE] = "1"
    else:  # c10's C++ warnings (a peer's store closing after a failure), with their stack frames
        env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if "OMP_NUM_THREADS" not in env:  # the ranks split the cores (and re-split them if more share this host)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        env["RECSCALE_SHARE_CORES"] = "1"  # sharding.process_group.SHARE_CORES (not imported: it loads TorchRec)
    env.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # elastic restarts: a store shared between torchrun and its workers keeps the first attempt's gloo
    # addresses, and the restarted workers hang in init_process_group (pytorch#135712)
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return env


def torchrun_command(
    nproc: int, module: str, module_args: list[str], log_dir: Path, max_restarts: int = 0
) -> list[str]:
    """``python -m torch.distributed.run --standalone ... -m module args`` as an argument list."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        f"--log-dir={log_dir}",
        "--tee=3",
        "--local-ranks-filter=0",  # the console shows rank 0; every rank's output is in log_dir
        "--role=rank",
        "-m",
        module,
        *module_args,
    ]


def run_local(
    run_dir: Path,
    nproc: int,
    resume: bool = False,
    max_restarts: int = 0,
    verbose: bool = False,
    bar: bool = False,
) -> int:
    """Train ``run_dir``'s config on ``nproc`` local ranks; returns torchrun's exit code.

    On a failure the console gets one line (``failure_line``): the first failing rank's reason and the
    path of its log, which holds the traceback. ``bar``: this process draws the progress bar from rank
    0's step lines (which the ranks then always print as lines).
    """
    args = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    log_dir = run_dir / LOGS
    cmd = torchrun_command(nproc, "recscale.launch.entrypoint", args, log_dir, max_restarts)
    started = time.time()
    env = {**worker_env(nproc, verbose), PROGRESS_LINES: "1"}
    code = run_filtered(cmd, env, log_dir, verbose, bar=bar)
    if code != 0:
        print(failure_line("train", log_dir, code, since=started), file=sys.stderr)
    return code


def run_eval_local(
    checkpoint: Path, data: str, nproc: int, batch_size: int, log_dir: Path, verbose: bool = False, bar: bool = False
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``nproc`` local ranks, their logs under ``log_dir``; returns the metrics.

    ``bar``: a progress bar over the evaluation batches (rank 0 then prints ``batch k/N`` lines).

    Raises:
        JobFailedError: a rank failed; the message is the first failing rank's reason and log.
    """
    args = ["--checkpoint", str(checkpoint), "--batch-size", str(batch_size)]
    if data:
        args += ["--data", data]
    return run_for_result("eval", "recscale.launch.eval_entrypoint", args, nproc, log_dir, verbose, bar)


def run_features_local(args: list[str], nproc: int, log_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """``recscale features select`` on ``nproc`` local ranks (``launch.features_entrypoint`` with ``args``).

    Returns:
        Rank 0's result: the importances, fronts and selections (``trainer.feature_filter.summary``).

    Raises:
        JobFailedError: a rank failed; the message is the first failing rank's reason and log.
    """
    return run_for_result("features", "recscale.launch.features_entrypoint", args, nproc, log_dir, verbose)


def run_for_result(
    command: str, module: str, args: list[str], nproc: int, log_dir: Path, verbose: bool = False, bar: bool = False
) -> dict[str, Any]:
    """Run ``module`` on ``nproc`` local ranks with ``args --out FILE --log-dir log_dir``; returns FILE's JSON.

    Rank 0 writes its result to FILE (a temporary file); the ranks' standard output goes to our standard
    error, so that our standard output carries only what the command prints from the result.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = torchrun_command(nproc, module, [*args, "--out", str(out), "--log-dir", str(log_dir)], log_dir)
        started = time.time()
        env = {**worker_env(nproc, verbose), **({PROGRESS_LINES: "1"} if bar else {})}
        code = run_filtered(cmd, env, log_dir, verbose, stdout=sys.stderr, bar=bar)
        if code != 0 or not out.exists():
            raise JobFailedError(failure_line(command, log_dir, code, since=started))
        result: dict[str, Any] = json.loads(out.read_text())
        return result


class JobFailedError(RuntimeError):
    """A local job failed; the message is its one console line (``failure_line``)."""
