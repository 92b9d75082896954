"""The checkpoint format and manager on small dense models (no tables): digests, verification, ``best``, pickles.

Every rank hashes the files it writes while writing them (no file is read back at save time), and on
resume each rank hashes only its own share; a corrupted file of rank 1 is found by rank 1 and the
checkpoint skipped on every rank. ``best`` is a link swapped in one rename: at every crash point there
is a complete best checkpoint. An asynchronous save writes the same files as a synchronous one even when
training changes the weights while it writes. Nothing in a checkpoint is unpickled: an index that names
other code, or an entry saved as a pickled object, is refused before any of it runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from recscale.configs import ConfigError, load_config
from recscale.configs.schema import CheckpointConfig, DenseOptimizerConfig
from recscale.sharding.checkpoint import (
    CheckpointManager,
    Chunks,
    DenseLayout,
    DenseState,
    ExpertSlot,
    TorchParamAccess,
    TrainerState,
    load_parts,
    read_manifest,
    save_parts,
    verify,
    writer,
)
from recscale.sharding.checkpoint import manager as manager_module
from recscale.sharding.checkpoint.reader import read_metadata
from recscale.sharding.checkpoint.writer import sha256_file
from recscale.sharding.dense_ddp import DDPDense
from tests.distributed import run_distributed


class _Manager(CheckpointManager):
    """The run directory policy over a dense backend and the trainer state (no tables)."""

    @staticmethod
    def _parts(parallel: Any, trainer_state: dict[str, Any] | None) -> dict[str, Any]:
        return {"dense": parallel.checkpoint_state(), "trainer": TrainerState(trainer_state)}


def _dense() -> DDPDense:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    return DDPDense(model, DenseOptimizerConfig(name="adam", lr=0.01), 20)


def _step(backend: DDPDense, seed: int) -> float:
    rank = dist.get_rank() if dist.is_initialized() else 0
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed * 10 + rank))
    backend.zero_grad()
    loss = backend.module(x).pow(2).mean()
    backend.backward(loss)
    backend.step()
    return float(loss)


def _weights(backend: DDPDense) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.inner.state_dict().items()}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ------------------------------------------------------------------------------- digests, verification


def _save_without_reading_back(rank: int, world: int, run_dir: str) -> None:
    def refuse(path: Path) -> str:
        raise AssertionError(f"rank {rank} read {path} back while saving")

    manager_module.sha256_file = refuse
    backend = _dense()
    for step in (1, 2):
        _step(backend, step)
        _Manager(Path(run_dir), CheckpointConfig(), rank, world).save(step, backend, {"step_seen": step})


@pytest.mark.distributed
def test_every_rank_records_the_digests_of_the_files_it_wrote(tmp_path):
    run_distributed(_save_without_reading_back, 2, str(tmp_path))
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    files = read_manifest(checkpoint)["files"]
    assert {f: m["rank"] for f, m in files.items()} == {
        ".metadata": 0,
        "__0_0.distcp": 0,
        "__1_0.distcp": 1,
        "trainer/rank0.json": 0,
        "trainer/rank1.json": 1,
    }
    for name, meta in files.items():
        assert meta["sha256"] == sha256_file(checkpoint / name) and meta["bytes"] == (checkpoint / name).stat().st_size
    assert verify(checkpoint) == []
    shares = [{Path(p).name for p in verify_share(checkpoint, r)} for r in (0, 1)]
    assert shares == [{".metadata", "__0_0.distcp", "rank0.json"}, {"__1_0.distcp", "rank1.json"}]


def verify_share(checkpoint: Path, rank: int) -> list[str]:
    """The files rank ``rank`` of 2 hashes when verifying (recorded through the hash function)."""
    seen: list[str] = []
    real = manager_module.sha256_file
    manager_module.sha256_file = lambda p: seen.append(str(p)) or real(p)
    try:
        assert verify(checkpoint, (rank, 2)) == []
    finally:
        manager_module.sha256_file = real
    return seen


def _choose_latest(rank: int, world: int, run_dir: str) -> dict[str, Any]:
    hashed: list[str] = []
    real = manager_module.sha256_file
    manager_module.sha256_file = lambda p: hashed.append(Path(p).name) or real(p)
    records = _Records()
    logging.getLogger("recscale").addHandler(records)
    latest = _Manager(Path(run_dir), CheckpointConfig(), rank, world).latest_valid()
    return {"latest": latest.name if latest else None, "hashed": hashed, "warnings": records.messages}


@pytest.mark.distributed
def test_a_corrupted_file_of_rank_1_is_found_by_rank_1_and_the_checkpoint_is_skipped(tmp_path):
    run_distributed(_save_without_reading_back, 2, str(tmp_path))
    victim = tmp_path / "checkpoints" / "step_00000002" / "__1_0.distcp"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    victim.write_bytes(bytes(data))
    on_rank = run_distributed(_choose_latest, 2, str(tmp_path))
    assert [r["latest"] for r in on_rank] == ["step_00000001", "step_00000001"]
    # each rank hashed only the files it wrote: rank 0 never read rank 1's files
    assert "__1_0.distcp" not in on_rank[0]["hashed"] and "__1_0.distcp" in on_rank[1]["hashed"]
    assert "__0_0.distcp" in on_rank[0]["hashed"] and "__0_0.distcp" not in on_rank[1]["hashed"]
    (warning,) = on_rank[0]["warnings"]
    assert f"{victim}: checksum mismatch (corrupted) (checked by rank 1)" in warning


# ------------------------------------------------------------------------------------------- best


def test_best_is_replaced_atomically_at_every_crash_point(tmp_path, monkeypatch):
    backend = _dense()
    manager = _Manager(tmp_path, CheckpointConfig(), 0, 1)
    best = manager.root / "best"
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def save_best(step: int) -> None:
        _step(backend, step)
        saved[step] = _weights(backend)
        manager.save(step, backend, {"best_step": step}, name="best")

    def best_is(step: int) -> None:
        assert verify(best) == [], f"best is not a complete checkpoint after step {step}"
        fresh = _dense()
        assert manager.load(best, fresh)["best_step"] == step
        assert all(torch.equal(v, saved[step][k]) for k, v in _weights(fresh).items())

    save_best(2)
    best_is(2)
    assert os.readlink(best) == "best-00000002"

    real_replace, real_rmtree = os.replace, shutil.rmtree

    def swap_crashes(src: Any, dst: Any) -> None:  # the link to the new best exists, the swap never happens
        if str(src).endswith(".best.link"):
            raise RuntimeError("crash")
        real_replace(src, dst)

    def cleanup_crashes(path: Any, *args: Any, **kwargs: Any) -> None:  # swapped, the old one still there
        if Path(path).name.startswith("best-"):
            raise RuntimeError("crash")
        real_rmtree(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(manager_module.os, "replace", swap_crashes)
        with pytest.raises(RuntimeError, match="crash"):
            save_best(4)
    best_is(2)
    assert (manager.root / "best-00000004" / "manifest.json").is_file()  # complete, but not the best

    with monkeypatch.context() as patch:
        patch.setattr(manager_module.shutil, "rmtree", cleanup_crashes)
        with pytest.raises(RuntimeError, match="crash"):
            save_best(6)
    best_is(6)

    save_best(8)  # the next save clears what the crashes left
    best_is(8)
    assert sorted(p.name for p in manager.root.iterdir()) == ["best", "best-00000008"]


def test_rotation_and_a_second_save_of_the_same_step(tmp_path):
    backend = _dense()
    manager = _Manager(tmp_path, CheckpointConfig(keep_last=2), 0, 1)
    for step in (1, 2, 3):
        _step(backend, step)
        manager.save(step, backend, {"at": step})
    assert [p.name for p in manager.list_complete()] == ["step_00000002", "step_00000003"]
    victim = manager.root / "step_00000003" / "__0_0.distcp"
    victim.write_bytes(victim.read_bytes()[:-5])
    assert manager.latest_valid().name == "step_00000002"
    fresh = _dense()
    manager.load(manager.root / "step_00000002", fresh)
    _step(fresh, 3)  # training again reaches step 3, whose damaged checkpoint is then replaced
    manager.save(3, fresh, {"at": 3, "again": True})
    assert manager.latest_valid().name == "step_00000003"
    manager.close()  # old checkpoints are deleted in the background; this waits for that
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_00000002", "step_00000003"]


# ------------------------------------------------------------------------------------------ async


def _sync_and_async(rank: int, world: int, run_dir: str) -> dict[str, Any]:
    backend = _dense()
    _step(backend, 1)
    sync = _Manager(Path(run_dir) / "sync", CheckpointConfig(), rank, world)
    sync.save(1, backend, {"at": 1})
    before = _weights(backend)
    asynchronous = _Manager(Path(run_dir) / "async", CheckpointConfig(async_save=True), rank, world)
    pending = asynchronous.save(1, backend, {"at": 1})
    went_on = [_step(backend, s) for s in (2, 3)]  # training changes weights and Adam state while it writes
    assert asynchronous.wait() == pending and pending.is_dir()
    fresh = _dense()
    state = asynchronous.load(pending, fresh)
    loaded = _weights(fresh)
    resumed = [_step(fresh, s) for s in (2, 3)]
    return {
        "before": before,
        "loaded": loaded,
        "state": state,
        "went_on": went_on,
        "resumed": resumed,
    }


@pytest.mark.distributed
def test_an_async_save_writes_what_a_sync_save_writes_while_training_goes_on(tmp_path):
    results = run_distributed(_sync_and_async, 2, str(tmp_path))
    buffers = ("1.running_mean", "1.running_var", "1.num_batches_tracked")
    for r in results:
        assert (r["state"]["at"], r["state"]["step"]) == (1, 1)
        for name, value in r["loaded"].items():  # the weights before training went on; rank 0's BatchNorm
            expected = results[0]["before"][name] if name in buffers else r["before"][name]  # statistics
            assert torch.equal(value, expected), name  # (DDP hands rank 0's to every rank at the next step)
        assert r["resumed"] == r["went_on"]  # the uninterrupted steps 2, 3, bit for bit
    sync, asynchronous = (
        read_manifest(tmp_path / k / "checkpoints" / "step_00000001")["files"] for k in ("sync", "async")
    )
    assert sorted(sync) == sorted(asynchronous)
    for name in sync:
        if name != ".metadata":  # the index names its own directory
            assert sync[name]["sha256"] == asynchronous[name]["sha256"], name


def _async_write_dies(rank: int, world: int, run_dir: str) -> None:
    backend = _dense()
    manager = _Manager(Path(run_dir), CheckpointConfig(async_save=True), rank, world)
    _step(backend, 1)
    manager.save(1, backend, {"at": 1})
    manager.wait()
    real_write = writer._HashingStream.write

    def write(self: Any, data: Any) -> int:
        if rank == 1 and "step_00000002.tmp" in self._file.name:  # in the background writer thread
            view = memoryview(data).cast("B")
            real_write(self, view[: len(view) // 2])
            self.flush()
            os._exit(9)
        return real_write(self, data)

    writer._HashingStream.write = write
    _step(backend, 2)
    manager.save(2, backend, {"at": 2})
    manager.wait()


@pytest.mark.distributed
def test_a_crash_during_an_async_write_leaves_only_a_tmp_directory(tmp_path):
    with pytest.raises(AssertionError, match="exit code 9|died"):
        run_distributed(_async_write_dies, 2, str(tmp_path), timeout_s=120)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002.tmp"]
    assert not (root / "step_00000002.tmp" / "manifest.json").exists()
    manager = _Manager(tmp_path, CheckpointConfig(), 0, 1)
    assert manager.latest_valid().name == "step_00000001"


# ------------------------------------------------------------------------------- expert slots, holes


class _Experts(torch.nn.Module):
    """K whole-tensor experts ``experts.<k>.w [3, 2]``, of which this module holds ``first .. first + n - 1``."""

    def __init__(self, k: int, first: int, n: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        every = [torch.randn(3, 2) for _ in range(k)]
        self.shared = torch.nn.Linear(2, 2)
        self.local = torch.nn.ParameterList(torch.nn.Parameter(every[first + i].clone()) for i in range(n))
        self.first, self.k = first, k

    def expert_slots(self) -> dict[str, ExpertSlot]:
        return {f"local.{i}": ExpertSlot(f"experts.{self.first + i}.w", (), (3, 2)) for i in range(len(self.local))}


class _Reference(torch.nn.Module):
    """The single-device model of ``_Experts``: every expert under its reference name."""

    def __init__(self, k: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        every = [torch.randn(3, 2) for _ in range(k)]
        self.shared = torch.nn.Linear(2, 2)
        self.experts = torch.nn.ModuleList(torch.nn.Module() for _ in range(k))
        for module, w in zip(self.experts, every):
            module.w = torch.nn.Parameter(w.clone())


def _stepped(module: torch.nn.Module) -> tuple[DenseState, torch.optim.Optimizer]:
    """One Adam step on a loss that differs per parameter, so values and moments are all distinct."""
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    loss = sum(p.pow(3).sum() for p in module.parameters())
    loss.backward()
    optimizer.step()
    world = dist.get_world_size() if dist.is_initialized() else 1
    state = DenseState(module, TorchParamAccess(optimizer), DenseLayout("ddp", world), lambda: 0, lambda s: None)
    return state, optimizer


def _experts_at_two(rank: int, world: int, directory: str, write: bool) -> dict[str, torch.Tensor]:
    module = _Experts(4, 2 * rank, 2)
    state, optimizer = _stepped(module) if write else (None, torch.optim.Adam(module.parameters(), lr=0.1))
    if write:
        save_parts(Path(directory), {"dense": state})
        return {}
    reader = DenseState(module, TorchParamAccess(optimizer), DenseLayout("ddp", 2), lambda: 0, lambda s: None)
    load_parts(Path(directory), {"dense": reader})
    return {
        **{f"experts.{2 * rank + i}.w": p.detach().clone() for i, p in enumerate(module.local)},
        **{f"exp_avg.{2 * rank + i}": optimizer.state[p]["exp_avg"].clone() for i, p in enumerate(module.local)},
    }


@pytest.mark.distributed
def test_whole_tensor_expert_slots_reshard_between_two_ranks_and_one(tmp_path):
    """Experts that are tensors of their own (``ExpertSlot(name, (), shape)``): each of 2 ranks writes its 2
    of 4; one rank with the reference model reads all 4, values and Adam state; and back again."""
    run_distributed(_experts_at_two, 2, str(tmp_path / "two"), True)
    reference = _Reference(4)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    reader = DenseState(reference, TorchParamAccess(optimizer), DenseLayout("ddp", 1), lambda: 0, lambda s: None)
    load_parts(tmp_path / "two", {"dense": reader})
    expected_module = _Reference(4)
    _, expected_opt = _stepped(expected_module)  # the same step on the single-device model
    for (name, p), q in zip(reference.named_parameters(), expected_module.parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(optimizer.state[p]["exp_avg"], expected_opt.state[q]["exp_avg"]), name
    # and from one rank back to two: each rank takes its experts
    state, _ = _stepped(_Reference(4))
    save_parts(tmp_path / "one", {"dense": state})
    got = run_distributed(_experts_at_two, 2, str(tmp_path / "one"), False)
    expected = dict(expected_module.named_parameters())
    for rank_result in got:
        for name, value in rank_result.items():
            if name.startswith("experts."):
                assert torch.equal(value, expected[name]), name
            else:
                k = int(name.split(".")[1])
                assert torch.equal(value, expected_opt.state[expected[f"experts.{k}.w"]]["exp_avg"]), name


class _Half:
    """A part whose tensor ``t [8]`` only rank 0 holds half of (a checkpoint would have a hole)."""

    per_rank = False

    def state_dict(self) -> dict[str, Any]:
        mine = Chunks((8,))
        if dist.get_rank() == 0:
            mine.add((0,), torch.ones(4))
        return {"t": mine, "whole": torch.arange(3.0)}


def _save_half(rank: int, world: int, directory: str) -> list[str]:
    records = _Records()
    logging.getLogger("recscale").addHandler(records)
    save_parts(Path(directory), {"part": _Half()})
    return records.messages


@pytest.mark.distributed
def test_an_entry_some_ranks_hold_only_part_of_is_left_out_with_a_warning(tmp_path):
    warnings = run_distributed(_save_half, 2, str(tmp_path))[0]
    assert any("not saved: part.t" in w for w in warnings), warnings
    assert set(read_metadata(tmp_path).state_dict_metadata) == {"part.whole"}


# ------------------------------------------------------------------------------------------ pickles


class _Boom:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_index_that_names_other_code_is_refused_before_it_runs(tmp_path):
    backend = _dense()
    _step(backend, 1)
    checkpoint = _Manager(tmp_path, CheckpointConfig(), 0, 1).save(1, backend, {"at": 1})
    marker = tmp_path / "ran"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(ValueError, match=r"pathlib\.Path\.touch|is not part of a checkpoint index: refused"):
        _Manager(tmp_path, CheckpointConfig(), 0, 1).load(checkpoint, _dense())
    assert not marker.exists()


def test_a_pickled_trainer_state_entry_is_refused_before_it_runs(tmp_path):
    checkpoint, marker = tmp_path / "checkpoint", tmp_path / "ran"
    save_parts(checkpoint, {"trainer": TrainerState({"x": torch.ones(2)})})
    # a checkpoint from elsewhere: its trainer state holds an object, which DCP pickles
    forged = tmp_path / "forged"
    dcp.save({"trainer": {"rank0": {"x": torch.ones(2), "evil": _Boom(marker)}}}, checkpoint_id=str(forged))
    for name in (".metadata", "__0_0.distcp"):
        shutil.copy(forged / name, checkpoint / name)
    stand_in = {"x": {"__tensor__": "float32", "shape": [2]}, "evil": {"__tensor__": "uint8", "shape": [1]}}
    (checkpoint / "trainer" / "rank0.json").write_text(json.dumps(stand_in))
    with pytest.raises(ValueError, match="trainer.rank0.evil is a pickled object: refused"):
        load_parts(checkpoint, {"trainer": TrainerState()})
    assert not marker.exists()


def test_older_formats_and_non_json_state_are_refused_with_one_line(tmp_path):
    backend = _dense()
    checkpoint = _Manager(tmp_path, CheckpointConfig(), 0, 1).save(0, backend, {"at": 0})
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    del manifest["format"]
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="checkpoint format 1, this recscale reads format 2") as err:
        _Manager(tmp_path, CheckpointConfig(), 0, 1).load(checkpoint, _dense())
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"checkpoint state trainer\.plateau\.when: a object is neither"):
        _Manager(tmp_path, CheckpointConfig(), 0, 1).save(1, backend, {"plateau": {"when": object()}})


def test_the_removed_deepspeed_files_key_and_bad_io_threads_are_config_errors():
    with pytest.raises(ConfigError, match="checkpoint.deepspeed_files: unknown key"):
        load_config("quickstart", ["checkpoint.deepspeed_files=false"])
    from recscale.configs import validate

    with pytest.raises(ConfigError, match="checkpoint.io_threads: expected 1 to 64 threads per rank, got 0"):
        validate(load_config("quickstart", ["checkpoint.io_threads=0"]), 1, "cpu")


# --------------------------------------------------------------------------------- direct reads


class _Pieces:
    """Pieces of several dtypes and shapes: two row boxes of a [10, 3] table, a bf16 vector in two, scalars."""

    per_rank = False

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randn(10, 3, generator=g)
        self.flat = torch.randn(9, generator=g).bfloat16()

    def state_dict(self) -> dict[str, Any]:
        rows, flat = Chunks((10, 3)), Chunks((9,))
        rows.add((0, 0), self.rows[:4])
        rows.add((4, 0), self.rows[4:])
        flat.add((0,), self.flat[:5])
        flat.add((5,), self.flat[5:])
        return {"rows": rows, "flat": flat, "count": torch.tensor(7), "bytes": torch.arange(5, dtype=torch.uint8)}


def test_direct_reads_give_what_dcps_own_reader_gives(tmp_path):
    """``SafeReader`` reads tensor bytes straight out of DCP's ``torch.save`` zips into the targets; this pins
    the zip layout it relies on against DCP's stock reader (and shows the stock reader reads our checkpoints)."""
    from torch.distributed.checkpoint import FileSystemReader

    from recscale.sharding.checkpoint.planner import LoadPlanner
    from recscale.sharding.checkpoint.reader import SafeReader

    pieces = _Pieces()
    save_parts(tmp_path, {"p": pieces})
    stock = {"rows": torch.empty(10, 3), "flat": torch.empty(9, dtype=torch.bfloat16)}
    stock |= {"count": torch.empty((), dtype=torch.int64), "bytes": torch.empty(5, dtype=torch.uint8)}
    dcp.load({"p": stock}, storage_reader=FileSystemReader(str(tmp_path)), no_dist=True)
    middle = Chunks((10, 3))
    middle.add((2, 0), torch.empty(6, 3))  # rows 2..7: the end of one saved box and the start of the other
    ours = {"rows": middle, "flat": torch.empty(9, dtype=torch.bfloat16)}
    ours |= {"count": torch.empty((), dtype=torch.int64), "bytes": torch.empty(5, dtype=torch.uint8)}
    before = SafeReader.direct_reads
    dcp.load({"p": ours}, storage_reader=SafeReader(tmp_path), planner=LoadPlanner(), no_dist=True)
    assert SafeReader.direct_reads - before == 6  # 2 row ranges, 2 halves, 2 scalars/vectors: no fallback
    assert torch.equal(stock["rows"], pieces.rows) and torch.equal(stock["flat"], pieces.flat)
    assert torch.equal(middle.pieces[0][1], pieces.rows[2:8])
    for key in ("flat", "count", "bytes"):
        assert torch.equal(ours[key], stock[key]), key
