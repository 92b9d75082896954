"""Leaving the process group at the end of a run (``sharding.process_group.shutdown_distributed``)."""

from __future__ import annotations

from tests.distributed import run_distributed


def _shutdown_with_a_subgroup_held(rank: int, world: int) -> dict[str, object]:
    """A subgroup kept alive only by a reference cycle (as sharded modules hold theirs), then shutdown."""
    import torch
    import torch.distributed as dist

    from recscale.sharding.process_group import shutdown_distributed

    class Holder:
        def __init__(self) -> None:
            self.group = dist.new_group(list(range(world)))
            self.me = self  # unreachable only through the garbage collector

    holder = Holder()
    t = torch.ones(1)
    dist.all_reduce(t, group=holder.group)
    del holder
    shutdown_distributed()
    after = dist.is_initialized()
    shutdown_distributed()  # a second call is a no-op, not an error
    return {"sum": float(t.item()), "initialized_after": after}


def test_shutdown_destroys_every_group_and_is_idempotent():
    results = run_distributed(_shutdown_with_a_subgroup_held, 2)
    assert results == [{"sum": 2.0, "initialized_after": False}] * 2


def test_flight_recorder_env_dumps_into_the_run_directory(tmp_path, monkeypatch):
    """GPU runs turn the NCCL flight recorder on: each rank dumps ``<run_dir>/flight_recorder/rank_<r>`` on a
    timeout; a value the user set already is kept."""
    from recscale.sharding.process_group import FLIGHT_RECORDER_DIR, enable_flight_recorder, flight_recorder_env

    env = flight_recorder_env(tmp_path)
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == str(tmp_path / FLIGHT_RECORDER_DIR / "rank_")
    for key in env:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_NCCL_TRACE_BUFFER_SIZE", "50")
    enable_flight_recorder(tmp_path)
    import os

    assert os.environ["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "50"
    assert os.environ["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"]
    assert (tmp_path / FLIGHT_RECORDER_DIR).is_dir()


def _cores_shared(rank: int, world: int) -> tuple[int, int]:
    import torch

    from recscale.sharding.process_group import ranks_on_this_host, share_cores

    torch.set_num_threads(3)  # what each of two one-rank "nodes" would take on its own
    on_host = ranks_on_this_host()
    share_cores(on_host)
    return on_host, torch.get_num_threads()


def test_ranks_on_one_machine_split_its_cores_however_they_were_launched():
    from recscale.sharding.process_group import available_cpus

    assert run_distributed(_cores_shared, 2) == [(2, max(1, available_cpus() // 2))] * 2


def test_launchers_let_the_ranks_split_the_cores_only_when_the_user_set_no_thread_count(monkeypatch):
    from recscale.launch.local import worker_env
    from recscale.launch.node import node_env
    from recscale.sharding.process_group import SHARE_CORES

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(SHARE_CORES, raising=False)
    assert worker_env(2)[SHARE_CORES] == "1" and node_env(1)[SHARE_CORES] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    for env in (worker_env(2), node_env(1)):
        assert env["OMP_NUM_THREADS"] == "4" and SHARE_CORES not in env
