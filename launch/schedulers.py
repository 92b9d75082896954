"""What ``recscale launch`` checks and decides before it submits: job shape, scheduler options, capacity.

Every check fails with one ``ValueError`` line naming the bad argument or config key, before anything
is created or submitted. Nothing here imports torch: a Slurm login node only needs the Python
environment. Scheduler options come from the config's ``launch`` section first, then from
``.torchxconfig`` (TorchX's own lookup: ``$TORCHXCONFIG``, else ``~/.torchxconfig`` and the
current directory), then TorchX's defaults. The log directory is always inside the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recscale.configs.schema import LaunchConfig

SCHEDULERS = ("local_cwd", "slurm")
SLURM_LOGS = "slurm"
"""``<run_dir>/logs/slurm``: sbatch script and per-node ``slurm-<job>-<role>-<k>.out|err``."""
TORCHX_LOGS = "torchx"
"""``<run_dir>/logs/torchx``: the local scheduler's per-node stdout/stderr."""

_JOB_SPEC = re.compile(r"^(\d+)x(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# sbatch directives are split on whitespace and end at a newline: allow Slurm's expression syntax
# (partition lists, constraint expressions, time formats) and nothing that breaks a line or an argument
_OPTION = re.compile(r"^[A-Za-z0-9_.,:+@=&|!*()\[\]/-]+$")
_SLURM_TIMEOUT_S = 20


# ------------------------------------------------------------------------------------ arguments


def check_scheduler(name: str) -> str:
    """The scheduler name, or ValueError naming the ones there are."""
    if name not in SCHEDULERS:
        raise ValueError(f"--scheduler {name}: unknown scheduler (expected one of {', '.join(SCHEDULERS)})")
    return name


def parse_job_spec(text: str) -> tuple[int, int]:
    """``-j NODESxPROCS`` -> (nodes, processes per node), both at least 1."""
    found = _JOB_SPEC.match(text.strip())
    if not found or int(found.group(1)) < 1 or int(found.group(2)) < 1:
        raise ValueError(f"-j {text}: expected NODESxPROCS with positive numbers, e.g. -j 2x4")
    return int(found.group(1)), int(found.group(2))


def job_name(launch: LaunchConfig, name: str) -> str:
    """The app / Slurm job name: ``launch.job_name`` or the config's ``name``, checked."""
    key, value = ("launch.job_name", launch.job_name) if launch.job_name else ("name", name)
    if not _NAME.match(value):
        raise ValueError(
            f"{key}: {value!r} cannot name a job (expected letters, digits, '_', '.', '-', at most 63 characters)"
        )
    return value


def check_option(key: str, value: Any) -> None:
    """A scheduler option that ends up in an sbatch directive: no whitespace, quotes or shell syntax."""
    if isinstance(value, str) and value and not _OPTION.match(value):
        raise ValueError(f"{key}: {value!r} is not a valid scheduler option value (no spaces, quotes or $)")


# -------------------------------------------------------------------------------- scheduler cfg


def scheduler_cfg(scheduler: str, launch: LaunchConfig, run_dir: Path) -> dict[str, Any]:
    """TorchX run options: the config's ``launch`` section, then ``.torchxconfig``; logs in the run dir."""
    from torchx.runner.config import apply

    cfg: dict[str, Any] = {}
    if scheduler == "local_cwd":
        cfg["log_dir"] = str(run_dir / "logs" / TORCHX_LOGS)
    else:
        for key in ("partition", "time", "account", "qos", "constraint"):
            value = getattr(launch.slurm, key)
            check_option(f"launch.slurm.{key}", value)
            if value:
                cfg[key] = value
        cfg["job_dir"] = str(run_dir / "logs" / SLURM_LOGS)
    apply(scheduler, cfg)  # fills only what is still missing
    for key, value in cfg.items():
        if key not in ("log_dir", "job_dir"):
            check_option(f".torchxconfig [{scheduler}] {key}", value)
    return cfg


def free_port() -> int:
    """A TCP port nobody listens on right now (for the rendezvous of a multi-node job)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


# -------------------------------------------------------------------------------------- capacity


def check_local_capacity(nnodes: int, nproc: int, gpus_per_node: int, cuda: bool) -> None:
    """local_cwd runs every "node" on this machine: ranks must fit its CPUs (or GPUs)."""
    procs = nnodes * nproc
    if cuda:
        import torch  # only here: the capacity of a CUDA machine

        have = torch.cuda.device_count()
        if procs > have:
            raise ValueError(f"-j {nnodes}x{nproc}: {procs} ranks need {procs} GPUs, this machine has {have}")
        return
    cpus = os.cpu_count() or 1
    if procs > cpus:
        raise ValueError(
            f"-j {nnodes}x{nproc}: {procs} ranks on this machine's {cpus} CPUs (local_cwd runs them all here)"
        )
    if gpus_per_node:
        raise ValueError(f"launch.gpus_per_node: {gpus_per_node} GPUs asked for, but the job trains on CPU")


@dataclass(frozen=True)
class SlurmNode:
    """One node of a Slurm partition as ``sinfo`` reports it."""

    name: str
    partition: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int
    state: str


def _run_slurm(cmd: list[str]) -> str:
    """Run a Slurm client command; ValueError with one line when Slurm cannot be reached."""
    if shutil.which(cmd[0]) is None:
        raise ValueError(f"--scheduler slurm: `{cmd[0]}` not found (is the Slurm client installed on this machine?)")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_SLURM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"--scheduler slurm: `{' '.join(cmd)}` did not answer in {_SLURM_TIMEOUT_S} s") from None
    if done.returncode != 0:
        first = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[0]
        raise ValueError(f"--scheduler slurm: the Slurm controller is not reachable ({cmd[0]}: {first})")
    return done.stdout


def _gres_gpus(gres: str) -> int:
    """GPUs in a ``%G`` field such as ``gpu:8``, ``gpu:h100:8(S:0-1)`` or ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def slurm_nodes() -> list[SlurmNode]:
    """Every node of every partition (``sinfo -N``); ValueError when Slurm is not reachable."""
    out = _run_slurm(["sinfo", "--noheader", "--Node", "--format=%N|%P|%c|%m|%G|%t"])
    nodes = []
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, partition, cpus, memory, gres, state = fields
        nodes.append(
            SlurmNode(
                name=name,
                partition=partition.rstrip("*"),
                default=partition.endswith("*"),
                cpus=int(cpus) if cpus.isdigit() else 0,
                memory_mb=int(memory.rstrip("+")) if memory.rstrip("+").isdigit() else 0,
                gpus=_gres_gpus(gres),
                state=state.rstrip("*~#!%$@^-"),
            )
        )
    return nodes


_UNUSABLE = ("down", "drain", "drng", "fail", "failg", "inval", "maint", "unk", "boot", "pow_dn", "npc")


def check_slurm_capacity(nodes: list[SlurmNode], partition: str, nnodes: int, cpus: int, gpus: int, mem_mb: int) -> str:
    """The partition can give ``nnodes`` nodes with ``cpus``/``gpus``/``mem_mb`` each; returns its name."""
    if not nodes:
        raise ValueError("--scheduler slurm: sinfo lists no nodes")
    if not partition:
        defaults = sorted({n.partition for n in nodes if n.default})
        if not defaults:
            raise ValueError("launch.slurm.partition: the cluster has no default partition; name one")
        partition = defaults[0]
    wanted = set(partition.split(","))  # sbatch takes a list; the job runs in one of them
    mine = [n for n in nodes if n.partition in wanted]
    if not mine:
        names = ", ".join(sorted({n.partition for n in nodes}))
        raise ValueError(f"launch.slurm.partition: no partition {partition!r} (the cluster has {names})")
    usable = [n for n in mine if not n.state.startswith(_UNUSABLE)]
    fits = [n for n in usable if n.cpus >= cpus and n.gpus >= gpus and (not mem_mb or n.memory_mb >= mem_mb)]
    if len(fits) < nnodes:
        biggest = max(usable, key=lambda n: (n.gpus, n.cpus, n.memory_mb), default=None)
        per_node = f"{cpus} CPUs" + (f", {gpus} GPUs" if gpus else "") + (f", {mem_mb} MB" if mem_mb else "")
        largest = (
            f"; its largest node has {biggest.cpus} CPUs, {biggest.gpus} GPUs, {biggest.memory_mb} MB"
            if biggest
            else ""
        )
        raise ValueError(
            f"-j: {nnodes} nodes with {per_node} each asked for, but partition {partition!r} has "
            f"{len(fits)} such nodes ({len(usable)} usable of {len(mine)}){largest}"
        )
    return partition


# ------------------------------------------------------------------------------- handles, state


def state_dir() -> Path:
    """Where launches are recorded (``$RECSCALE_STATE_DIR``, else ``~/.local/state/recscale``).

    TorchX's Slurm scheduler also keeps its job-directory index (``.torchxslurmjobdirs``) in the
    current directory; recscale runs TorchX's Slurm calls from here so ``recscale logs`` works from
    anywhere.
    """
    base = os.environ.get("RECSCALE_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "recscale"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def in_state_dir(scheduler: str) -> Iterator[Path]:
    """Run the enclosed TorchX Slurm calls from the state directory (see :func:`state_dir`).

    local_cwd jobs run in the current directory, as TorchX's name says; nothing changes for them.
    """
    here = os.getcwd()
    if scheduler != "slurm":
        yield Path(here)
        return
    path = state_dir()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(here)


HANDLES = "handles.jsonl"


def record_launch(handle: str, info: dict[str, Any]) -> None:
    """Append ``handle`` and what ``recscale status/logs`` need about it to the state directory."""
    with open(state_dir() / HANDLES, "a") as f:
        f.write(json.dumps({"handle": handle, **info}) + "\n")


def find_launch(handle: str) -> dict[str, Any]:
    """What was recorded about ``handle`` (the latest record wins; empty when unknown)."""
    path = state_dir() / HANDLES
    found: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("handle") == handle:
                found.update(record)
    return found


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary name, then rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
