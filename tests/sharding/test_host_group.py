"""The trainer's CPU-tensor collectives go through ``host_group()``, the gloo side group of GPU runs.

An NCCL default group refuses CPU tensors ("No backend type associated with device type cpu"). There is
no NCCL here, so the test makes the default group behave that way for recscale's own calls: every CPU
tensor that recscale code hands to the default group is an error, and the side group is forced into
being on gloo. A short 2-rank run with evaluation, checkpoints and a resume must then go through.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import run_distributed
from tests.trainer.runs import new_run, small_job


def _train_as_on_gpus(rank: int, world: int, cfg, run_dir: Path) -> dict[str, int]:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    from recscale.sharding import process_group
    from recscale.trainer.loop import train

    def forced_side_group(timeout_s: float) -> None:
        process_group._HOST_GROUP = dist.new_group(backend="gloo")

    process_group._set_host_group = forced_side_group
    counts = {"host": 0}

    def guarded(collective):  # type: ignore[no-untyped-def]
        def call(tensor_or_list, *args, **kwargs):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_globals.get("__name__", "")
            tensors = tensor_or_list if isinstance(tensor_or_list, list) else [tensor_or_list]
            group = kwargs.get("group")
            if caller.startswith("recscale.") and any(t.device.type == "cpu" for t in tensors):
                if group is None or group is dist.group.WORLD:
                    raise RuntimeError(f"{caller}: a CPU tensor on the default group (NCCL would refuse it)")
                counts["host"] += group is process_group.host_group()
            return collective(tensor_or_list, *args, **kwargs)

        return call

    dist.all_reduce = guarded(dist.all_reduce)
    dist.all_gather = guarded(dist.all_gather)
    first = train(cfg, run_dir)["steps"]
    second = train(cfg, run_dir, resume=True)["steps"]
    return {"steps": first, "resumed_at": second, "host_collectives": counts["host"]}


def test_cpu_collectives_use_the_side_group(tmp_path) -> None:
    cfg = small_job(tmp_path / "cache", "trainer.eval_every=4", "trainer.log_every=2")
    run_dir = new_run(tmp_path, "run", cfg)
    results = run_distributed(_train_as_on_gpus, 2, cfg, run_dir)
    for r in results:
        assert r["steps"] == r["resumed_at"] == 16
        # plan digest, restart flag, log windows (loss and FLOP sums), eval gathers: a few dozen
        assert r["host_collectives"] > 20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: NCCL")
def test_nccl_default_group_refuses_cpu_tensors_and_the_side_group_takes_them(monkeypatch) -> None:
    """The premise, on a real NCCL group of one rank (one GPU is enough)."""
    import torch.distributed as dist

    from recscale.sharding.process_group import _free_port, host_group, init_distributed, shutdown_distributed

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    init_distributed("cuda", timeout_s=60)
    try:
        assert dist.get_backend() == "nccl" and host_group() is not None
        with pytest.raises(RuntimeError):
            dist.all_reduce(torch.ones(1))
        t = torch.ones(1)
        dist.all_reduce(t, group=host_group())
        assert t.item() == 1.0
    finally:
        shutdown_distributed()
