"""The checkpoint manager on small dense models (no tables): digests, verification, ``best``, async saves.

Every rank hashes the files it writes while writing them (no file is read back at save time), and on
resume each rank hashes only its own share; a corrupted file of rank 1 is found by rank 1 and the
checkpoint skipped on every rank. ``best`` is a link swapped in one rename: at every crash point there
is a complete best checkpoint. An asynchronous save writes the same files as a synchronous one even when
training changes the weights while it writes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from recscale.configs.schema import CheckpointConfig
from recscale.sharding.checkpoint import manager as manager_module
from recscale.sharding.checkpoint import (
    read_manifest,
    verify,
    writer,
)
from recscale.sharding.checkpoint.writer import sha256_file
from tests.distributed import run_distributed
from tests.sharding.checkpoint_helpers import Manager, WarningRecords, dense_backend, train_step, weights_of

# ------------------------------------------------------------------------------- digests, verification


def _save_without_reading_back(rank: int, world: int, run_dir: str) -> None:
    def refuse(path: Path) -> str:
        raise AssertionError(f"rank {rank} read {path} back while saving")

    manager_module.sha256_file = refuse
    backend = dense_backend()
    for step in (1, 2):
        train_step(backend, step)
        Manager(Path(run_dir), CheckpointConfig(), rank, world).save(step, backend, {"step_seen": step})


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
    records = WarningRecords()
    logging.getLogger("recscale").addHandler(records)
    latest = Manager(Path(run_dir), CheckpointConfig(), rank, world).latest_valid()
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
    backend = dense_backend()
    manager = Manager(tmp_path, CheckpointConfig(), 0, 1)
    best = manager.root / "best"
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def save_best(step: int) -> None:
        train_step(backend, step)
        saved[step] = weights_of(backend)
        manager.save(step, backend, {"best_step": step}, name="best")

    def best_is(step: int) -> None:
        assert verify(best) == [], f"best is not a complete checkpoint after step {step}"
        fresh = dense_backend()
        assert manager.load(best, fresh)["best_step"] == step
        assert all(torch.equal(v, saved[step][k]) for k, v in weights_of(fresh).items())

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
    backend = dense_backend()
    manager = Manager(tmp_path, CheckpointConfig(keep_last=2), 0, 1)
    for step in (1, 2, 3):
        train_step(backend, step)
        manager.save(step, backend, {"at": step})
    assert [p.name for p in manager.list_complete()] == ["step_00000002", "step_00000003"]
    victim = manager.root / "step_00000003" / "__0_0.distcp"
    victim.write_bytes(victim.read_bytes()[:-5])
    assert manager.latest_valid().name == "step_00000002"
    fresh = dense_backend()
    manager.load(manager.root / "step_00000002", fresh)
    train_step(fresh, 3)  # training again reaches step 3, whose damaged checkpoint is then replaced
    manager.save(3, fresh, {"at": 3, "again": True})
    assert manager.latest_valid().name == "step_00000003"
    manager.close()  # old checkpoints are deleted in the background; this waits for that
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_00000002", "step_00000003"]


# ------------------------------------------------------------------------------------------ async


def _sync_and_async(rank: int, world: int, run_dir: str) -> dict[str, Any]:
    backend = dense_backend()
    train_step(backend, 1)
    sync = Manager(Path(run_dir) / "sync", CheckpointConfig(), rank, world)
    sync.save(1, backend, {"at": 1})
    before = weights_of(backend)
    asynchronous = Manager(Path(run_dir) / "async", CheckpointConfig(async_save=True), rank, world)
    pending = asynchronous.save(1, backend, {"at": 1})
    went_on = [train_step(backend, s) for s in (2, 3)]  # training changes weights and Adam state while it writes
    assert asynchronous.wait() == pending and pending.is_dir()
    fresh = dense_backend()
    state = asynchronous.load(pending, fresh)
    loaded = weights_of(fresh)
    resumed = [train_step(fresh, s) for s in (2, 3)]
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
    backend = dense_backend()
    manager = Manager(Path(run_dir), CheckpointConfig(async_save=True), rank, world)
    train_step(backend, 1)
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
    train_step(backend, 2)
    manager.save(2, backend, {"at": 2})
    manager.wait()


@pytest.mark.distributed
def test_a_crash_during_an_async_write_leaves_only_a_tmp_directory(tmp_path):
    with pytest.raises(AssertionError, match="exit code 9|died"):
        run_distributed(_async_write_dies, 2, str(tmp_path), timeout_s=120)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002.tmp"]
    assert not (root / "step_00000002.tmp" / "manifest.json").exists()
    manager = Manager(tmp_path, CheckpointConfig(), 0, 1)
    assert manager.latest_valid().name == "step_00000001"
