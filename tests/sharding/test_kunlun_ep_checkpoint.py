"""A Kunlun checkpoint written with MoWE experts spread over ranks reloads at world 1, and back.

World 2, ep_size 2 (``ExpertParallelMoWE`` under DeepSpeed): each rank holds 2 of the 4 experts of
every MoWE layer and writes them as the reference model's ``interaction.<l>.experts.<g>.*`` tensors
(``ExpertSharded.expert_slots``, whole tensors). The single-device reference model (``DDPDense`` at
world 1) reads that checkpoint with every weight equal to the expert-parallel model's, and the other
way round: a reference checkpoint loads into the expert-parallel model, each rank taking its experts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from recscale.configs.schema import DenseOptimizerConfig, MoEParallelConfig
from recscale.sharding.checkpoint import load_parts, save_parts
from recscale.sharding.dense_parallel import DDPDense, DeepSpeedDense
from recscale.sharding.expert_parallel import ExpertParallelMoWE, apply_expert_parallel
from tests.distributed import run_distributed
from tests.sharding.test_kunlun_ep import GLOBAL_BATCH, _batches, _loss, _model, _rows

OPTIMIZER = DenseOptimizerConfig(name="adam", lr=0.01)
STEPS = 2


def _as_reference(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This rank's weights under the reference model's names (an EP rank: only its experts)."""
    out = {}
    slots = {}
    for path, block in module.named_modules():
        if isinstance(block, ExpertParallelMoWE):
            slots.update({f"{path}.{local}": f"{path}.{s.reference}" for local, s in block.expert_slots().items()})
    for name, tensor in module.state_dict().items():
        out[slots.get(name, name)] = tensor.detach().clone()
    return out


def _train(backend: DDPDense | DeepSpeedDense, rank: int, world: int) -> None:
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    for batch in _batches(STEPS):
        *inputs, labels = _rows(batch, rows)
        backend.zero_grad()
        backend.backward(_loss(backend.module(*inputs), labels))
        backend.step()


def _expert_parallel(world: int) -> DeepSpeedDense:
    ep = apply_expert_parallel(copy.deepcopy(_model()), 2, MoEParallelConfig())
    return DeepSpeedDense(ep, OPTIMIZER, STEPS, 0, GLOBAL_BATCH // world, False)


def _write_ep(rank: int, world: int, directory: str) -> dict[str, torch.Tensor]:
    backend = _expert_parallel(world)
    _train(backend, rank, world)
    save_parts(Path(directory), {"dense": backend.checkpoint_state()})
    return _as_reference(backend.inner)


def _read_reference(rank: int, world: int, directory: str) -> dict[str, torch.Tensor]:
    backend = DDPDense(_model(), OPTIMIZER, STEPS)
    load_parts(Path(directory), {"dense": backend.checkpoint_state()})
    return _as_reference(backend.inner)


def _write_reference(rank: int, world: int, directory: str) -> dict[str, torch.Tensor]:
    backend = DDPDense(_model(), OPTIMIZER, STEPS)
    _train(backend, 0, 1)
    save_parts(Path(directory), {"dense": backend.checkpoint_state()})
    return _as_reference(backend.inner)


def _read_ep(rank: int, world: int, directory: str) -> dict[str, torch.Tensor]:
    backend = _expert_parallel(world)
    load_parts(Path(directory), {"dense": backend.checkpoint_state()})
    return _as_reference(backend.inner)


def _merged(per_rank: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for weights in per_rank:
        for name, tensor in weights.items():
            if name in out:
                assert torch.equal(out[name], tensor), f"{name} differs between ranks"
            out[name] = tensor
    return out


@pytest.mark.distributed
def test_ep2_checkpoint_loads_into_the_reference_at_world_1(tmp_path):
    written = _merged(run_distributed(_write_ep, 2, str(tmp_path), timeout_s=300))
    initial = _model().state_dict()
    assert sorted(written) == sorted(initial)  # the two ranks' experts make up the reference model
    assert any(not torch.equal(written[k], initial[k]) for k in written if ".experts." in k)  # trained
    (read,) = run_distributed(_read_reference, 1, str(tmp_path), timeout_s=300)
    assert read.keys() == written.keys()
    for name, tensor in written.items():
        assert torch.equal(read[name], tensor), name


@pytest.mark.distributed
def test_reference_checkpoint_loads_into_the_ep2_model(tmp_path):
    (written,) = run_distributed(_write_reference, 1, str(tmp_path), timeout_s=300)
    per_rank = run_distributed(_read_ep, 2, str(tmp_path), timeout_s=300)
    for rank, weights in enumerate(per_rank):
        experts = {k for k in weights if ".experts." in k}
        assert experts and all(f".experts.{2 * rank}." in k or f".experts.{2 * rank + 1}." in k for k in experts)
        for name, tensor in weights.items():
            assert torch.equal(tensor, written[name]), name
    assert sorted(_merged(per_rank)) == sorted(written)
