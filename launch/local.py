"""Run a job's ranks on this machine with torchrun (``python -m torch.distributed.run``).

The command line is a list of arguments, never a shell string, so nothing in a config can inject
shell syntax. torchrun writes every rank's stdout/stderr under ``<run_dir>/logs``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from recscale.trainer.run_dir import LOGS


def worker_env(nproc: int) -> dict[str, str]:
    """Environment of the ranks: threads split between local ranks, DeepSpeed's accelerator."""
    env = dict(os.environ)
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


def run_local(run_dir: Path, nproc: int, resume: bool = False, max_restarts: int = 0) -> int:
    """Train ``run_dir``'s config on ``nproc`` local ranks; returns torchrun's exit code."""
    args = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    log_dir = run_dir / LOGS
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(nproc, "recscale.launch.entrypoint", args, log_dir, max_restarts)
    code = subprocess.call(cmd, env=worker_env(nproc))
    if code != 0:
        print_failed_rank_logs(log_dir)
    return code


def run_eval_local(checkpoint: Path, data: str, nproc: int, batch_size: int) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``nproc`` local ranks; returns the metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = ["--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", str(batch_size)]
        if data:
            args += ["--data", data]
        cmd = torchrun_command(nproc, "recscale.launch.eval_entrypoint", args, Path(tmp) / "logs")
        code = subprocess.call(cmd, env=worker_env(nproc), stdout=sys.stderr)
        if code != 0 or not out.exists():
            raise RuntimeError(f"evaluation failed (exit code {code})")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def print_failed_rank_logs(log_dir: Path, lines: int = 25) -> None:
    """Show why the job failed: the end of each failing rank's stderr, then each rank's reason.

    Rank 0's output was on the console already. The entrypoint logs ``rank N failed: <reason>``; those
    lines are printed last, where a user looks.
    """
    reasons: dict[str, None] = {}
    for path in sorted(log_dir.rglob("stderr.log")):
        text = path.read_text(errors="replace").splitlines()
        for line in text:
            found = FAILED_LINE.search(line)
            if found:
                reasons[found.group(0)] = None
        if path.parent.name != "0" and any("Error" in line or " failed" in line for line in text):
            print(f"--- rank {path.parent.name} ({path}) ---", file=sys.stderr)
            print("\n".join(text[-lines:]), file=sys.stderr)
    for reason in reasons:
        print(reason, file=sys.stderr)


FAILED_LINE = re.compile(r"\brank \d+ failed: .*")
