"""What goes into a checkpoint and how it is read back: expert slots, holes, pickles, old formats, direct reads.

Whole-tensor expert slots reshard between 2 ranks and 1; an entry only part of which the ranks hold is
left out with a warning; nothing in a checkpoint is unpickled: an index that names other code, or an entry
saved as a pickled object, is refused before any of it runs; older formats are refused in one line; and the
direct reads out of DCP's files give what DCP's own reader gives.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from recscale.configs import ConfigError, load_config
from recscale.configs.schema import CheckpointConfig
from recscale.sharding.checkpoint import (
    Chunks,
    DenseLayout,
    DenseState,
    ExpertSlot,
    TorchParamAccess,
    TrainerState,
    load_parts,
    save_parts,
)
from recscale.sharding.checkpoint.reader import read_metadata
from tests.distributed import run_distributed
from tests.sharding.checkpoint_helpers import Manager, WarningRecords, dense_backend, train_step

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
    records = WarningRecords()
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
    backend = dense_backend()
    train_step(backend, 1)
    checkpoint = Manager(tmp_path, CheckpointConfig(), 0, 1).save(1, backend, {"at": 1})
    marker = tmp_path / "ran"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(ValueError, match=r"pathlib\.Path\.touch|is not part of a checkpoint index: refused"):
        Manager(tmp_path, CheckpointConfig(), 0, 1).load(checkpoint, dense_backend())
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
    backend = dense_backend()
    checkpoint = Manager(tmp_path, CheckpointConfig(), 0, 1).save(0, backend, {"at": 0})
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    del manifest["format"]
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="checkpoint format 1, this recscale reads format 2") as err:
        Manager(tmp_path, CheckpointConfig(), 0, 1).load(checkpoint, dense_backend())
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"checkpoint state trainer\.plateau\.when: a object is neither"):
        Manager(tmp_path, CheckpointConfig(), 0, 1).save(1, backend, {"plateau": {"when": object()}})


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
