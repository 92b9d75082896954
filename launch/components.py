"""recscale's TorchX component: one training job as a ``specs.AppDef``, for any TorchX scheduler.

The job is one role with ``nnodes`` replicas. Each replica runs :mod:`recscale.launch.node`, which
finds the first node from the scheduler's environment and ``exec``s torchrun with
``nproc_per_node`` ranks of :mod:`recscale.launch.entrypoint`. The command is an argument list and
the component never builds a shell string (TorchX's builtin ``dist.ddp`` wraps torchrun in
``bash -c``). ``recscale launch`` calls :func:`trainer`; TorchX's CLI can too::

    torchx run -s local_cwd recscale/launch/components.py:trainer --run_dir runs/x --nnodes 2
"""

from __future__ import annotations

import sys

import torchx.specs as specs

NODE_MODULE = "recscale.launch.node"


def trainer(
    run_dir: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    cpu: int = 0,
    gpu: int = 0,
    memMB: int = 0,  # noqa: N803 - TorchX's name for it
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    name: str = "recscale",
    python: str = "",
    env: dict[str, str] | None = None,
) -> specs.AppDef:
    """Train the job whose config is ``<run_dir>/config.yaml`` on ``nnodes`` x ``nproc_per_node`` ranks.

    Args:
        run_dir: the run directory (created, with its ``config.yaml``, before submission; on a file
            system every node sees).
        nnodes: nodes (TorchX replicas).
        nproc_per_node: ranks per node.
        cpu: CPUs per node (0 = one per rank).
        gpu: GPUs per node.
        memMB: memory per node in MB (0 = the scheduler's default).
        max_restarts: torchrun's elastic restarts; each resumes from the newest complete checkpoint.
        rdzv_port: port of the rendezvous store on the first node (multi-node jobs).
        name: app and role name (Slurm job names are ``<name>-<node>``).
        python: the interpreter on the nodes (default: this one, i.e. the same environment).
        env: extra environment variables of every rank.

    Returns:
        The application definition.
    """
    role_env = {"PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cuda" if gpu > 0 else "cpu"}
    role_env.update(env or {})
    args = [
        "-m",
        NODE_MODULE,
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc_per_node),
        "--max-restarts",
        str(max_restarts),
        "--rdzv-host-env",
        specs.macros.rank0_env,  # the *name* of the variable: node.py reads it
        "--rdzv-port",
        str(rdzv_port),
        "--rdzv-id",
        specs.macros.app_id,
        "--log-dir",
        f"{run_dir}/logs/node{specs.macros.replica_id}",
        "--node",
        specs.macros.replica_id,
        "--",
        "--run-dir",
        run_dir,
    ]
    role = specs.Role(
        name=name,
        image=run_dir,
        entrypoint=python or sys.executable,
        args=args,
        env=role_env,
        num_replicas=nnodes,
        resource=specs.Resource(cpu=cpu or nproc_per_node, gpu=gpu, memMB=memMB),
        port_map={"c10d": rdzv_port},
        max_retries=0,
    )
    return specs.AppDef(name=name, roles=[role])
