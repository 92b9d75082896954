"""Per-node launcher of a TorchX job: find the rendezvous host, then become torchrun (no shell).

TorchX tells a replica where the first node is only through an environment variable whose *name*
depends on the scheduler (``specs.macros.rank0_env``: ``TORCHX_RANK0_HOST`` on local_cwd,
``SLURM_JOB_NODELIST_HET_GROUP_0`` on Slurm). TorchX's own ``dist.ddp`` dereferences it with
``bash -c '... $${rank0_env} ...'``; this module reads it in Python instead and ``exec``s torchrun
with an argument list, so no value of a config ever passes through a shell::

    python -m recscale.launch.node --nnodes 2 --nproc-per-node 4 --rdzv-host-env SLURM_JOB_NODELIST_HET_GROUP_0
        --rdzv-port 29500 --rdzv-id 1234 --max-restarts 1 --log-dir RUN_DIR/logs/node0 -- --run-dir RUN_DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ENTRYPOINT = "recscale.launch.entrypoint"


def rendezvous_host(value: str) -> str:
    """The first host of a Slurm node list (``node[1-2]`` -> ``node1``), or the value itself."""
    if not value:
        return "localhost"
    if any(c in value for c in "[,"):
        out = subprocess.run(["scontrol", "show", "hostnames", value], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    return value


def torchrun_args(args: argparse.Namespace, host: str) -> list[str]:
    """The arguments of torchrun on this node (an argument list)."""
    common = [
        f"--nproc-per-node={args.nproc_per_node}",
        f"--max-restarts={args.max_restarts}",
        f"--log-dir={args.log_dir}",
        "--tee=3",  # every rank's output in the scheduler's log of this node, and in log_dir
        f"--role=node{args.node}.local",  # output lines start [node<k>.local<local rank>]:
    ]
    if args.nnodes == 1:
        rdzv = ["--standalone"]  # a free port on this machine: concurrent one-node jobs never collide
    else:
        rdzv = [
            f"--nnodes={args.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host}:{args.rdzv_port}",
            f"--rdzv-id={args.rdzv_id}",
        ]
    return [*rdzv, *common, "-m", ENTRYPOINT, *args.entrypoint_args]


def node_env(nproc: int) -> dict[str, str]:
    """The workers' environment: threads split between local ranks, restart-safe stores."""
    env = dict(os.environ)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if "OMP_NUM_THREADS" not in env:  # the ranks split the cores (and re-split them if more share this host)
        env["OMP_NUM_THREADS"] = str(max(1, cpus // nproc))
        env["RECSCALE_SHARE_CORES"] = "1"  # sharding.process_group.SHARE_CORES (this module imports no torch)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # elastic restarts: a store shared between torchrun and its workers keeps the first attempt's gloo
    # addresses, and the restarted workers hang in init_process_group (pytorch#135712)
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    """Parse, resolve the rendezvous host, exec torchrun (returns only if exec fails)."""
    parser = argparse.ArgumentParser(prog="recscale.launch.node")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--max-restarts", type=int, default=0)
    parser.add_argument("--rdzv-host-env", default="", help="name of the variable holding the first node's host")
    parser.add_argument("--rdzv-port", type=int, default=29500)
    parser.add_argument("--rdzv-id", default="recscale")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--node", default="0", help="this node's index (TorchX replica id), for output prefixes")
    parser.add_argument("entrypoint_args", nargs=argparse.REMAINDER, help="after --: the entrypoint's arguments")
    args = parser.parse_args(argv)
    if args.entrypoint_args[:1] == ["--"]:
        args.entrypoint_args = args.entrypoint_args[1:]
    host = rendezvous_host(os.environ.get(args.rdzv_host_env, "") if args.rdzv_host_env else "")
    os.makedirs(args.log_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(args, host)]
    print(f"[recscale.launch.node] rendezvous {host}:{args.rdzv_port}; exec {cmd}", file=sys.stderr, flush=True)
    os.execve(sys.executable, cmd, node_env(args.nproc_per_node))
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
