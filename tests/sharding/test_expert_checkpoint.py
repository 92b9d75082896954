"""Dense checkpoints reload at another layout: ep_size, world size, ZeRO stage or backend.

A checkpoint written at world 2 with experts spread over 2 ranks (DeepSpeed, ep_size 2) reloads at
world 1 (reference DDP backend, or DeepSpeed ep 1) with the same forward outputs, and at world 2 with
ep_size 1 (and back) with the uninterrupted run's loss curve: weights *and* Adam state carry over
(a resume with fresh Adam state is shown to leave that curve). A model of another shape is refused
with one line naming the parameter and both shapes. Every rank writes only what it owns: its
experts, its ZeRO partition's fragments.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import MetadataIndex

from recscale.configs.schema import DenseOptimizerConfig, HiLoMoEConfig, StageConfig
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.hilomoe import HiLoMoELinear, apply_training_stage, build_moe_dense
from recscale.sharding.checkpoint import DenseLayout, load_parts, read_manifest, save_parts
from recscale.sharding.checkpoint.reader import read_metadata
from recscale.sharding.dense_parallel import DDPDense, DeepSpeedDense
from recscale.sharding.expert_parallel import DeepSpeedHiLoMoELinear, apply_expert_parallel
from recscale.sharding.moe_collectives import install_global_balance_stats
from recscale.sharding.zero_fragments import ZeroParamAccess
from tests.distributed import run_distributed
from tests.sharding.test_expert_parallel import GLOBAL_BATCH, LR, NUM_DENSE, POOLED, _batches, _loss, _model

STEPS = 6
"""Training steps of every run: 3 before the checkpoint, 3 after it."""


def _model_k8() -> torch.nn.Module:
    """``_model`` with 8 experts per layer instead of 4 (a checkpoint of it cannot load into ``_model``)."""
    torch.manual_seed(0)
    inner = DCNv2Dense(NUM_DENSE, POOLED, bottom=[], deep=[16, 8], num_cross_layers=1, low_rank=4)
    return build_moe_dense(inner, HiLoMoEConfig(num_experts=8, num_layers=2, routing="topk", top_k=2), ["deep"])


def _backend(spec: str, world: int, model: torch.nn.Module | None = None) -> DDPDense | DeepSpeedDense:
    """``ddp`` (reference blocks under DDP) or ``ep<G>-z<Z>[-bf16]`` (DeepSpeed, ep_size G, ZeRO Z), Adam."""
    cfg = DenseOptimizerConfig(name="adam", lr=LR)
    model = model if model is not None else _model()
    if spec == "ddp":  # as parallelize() sets it up: balance statistics over the global batch
        if world > 1:
            install_global_balance_stats(model)
        return DDPDense(model, cfg, STEPS)
    ep_part, zero_part, *precision = spec.split("-")
    ep, zero, bf16 = int(ep_part[2:]), int(zero_part[1:]), precision == ["bf16"]
    model = model.bfloat16() if bf16 else model
    return DeepSpeedDense(apply_expert_parallel(model, ep), cfg, STEPS, zero, GLOBAL_BATCH // world, bf16)


def _rows(rank: int, world: int) -> slice:
    return slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)


def _train(backend: DDPDense | DeepSpeedDense, chunk: list, rows: slice) -> list[float]:
    """One step per batch; the loss averaged over ranks (the global batch's)."""
    out, dtype = [], next(backend.inner.parameters()).dtype
    for dense, pooled, labels in chunk:
        logits, aux, diagnostics = backend.module(dense[rows].to(dtype), pooled[rows].to(dtype))
        loss = _loss((logits.float(), aux.float(), diagnostics), labels[rows])
        backend.zero_grad()
        backend.backward(loss)
        backend.step()
        mean = loss.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        out.append(float(mean))
    return out


def _logits(backend: DDPDense | DeepSpeedDense, batch: tuple, rows: slice) -> torch.Tensor:
    """Logits of the whole global batch (each rank computes its rows; gathered)."""
    dense, pooled, _ = batch
    dtype = next(backend.inner.parameters()).dtype
    with torch.no_grad():
        mine = backend.inner(dense[rows].to(dtype), pooled[rows].to(dtype))[0].float().contiguous()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts)


def _save(backend: DDPDense | DeepSpeedDense, path: Path) -> None:
    save_parts(path, {"dense": backend.checkpoint_state()})


def _load(backend: DDPDense | DeepSpeedDense, path: Path) -> None:
    load_parts(path, {"dense": backend.checkpoint_state()})


def _fresh_optimizer(backend: DDPDense | DeepSpeedDense) -> None:
    """Throw the optimizer state away, as a load that could not carry it would (the control)."""
    access = backend.checkpoint_state().access
    for p in backend.inner.parameters():
        access.set_fresh(p)  # zero moments (ZeRO) or no state at all (torch)
        if isinstance(access, ZeroParamAccess):
            access.set_step(p, 0.0)  # the group's step count


def _write_then_reload(rank: int, world: int, directory: str, writer: str, readers: list[str]) -> dict:
    """Train 3 steps under ``writer``, save, train 3 more; then each reader loads and trains the same 3."""
    batches, rows, path = _batches(STEPS), _rows(rank, world), Path(directory)
    first = _backend(writer, world)
    _train(first, batches[:3], rows)
    _save(first, path)
    out: dict = {"logits": _logits(first, batches[3], rows), "uninterrupted": _train(first, batches[3:], rows)}
    for spec in readers:
        second = _backend(spec, world)
        _load(second, path)
        logits = _logits(second, batches[3], rows)
        out[spec] = {"logits": logits, "losses": _train(second, batches[3:], rows)}
    control = _backend(readers[0], world)
    _load(control, path)
    _fresh_optimizer(control)
    out["fresh_optimizer"] = _train(control, batches[3:], rows)
    return out


def _read_at_world_1(rank: int, world: int, directory: str, readers: list[str]) -> dict:
    """Logits of the checkpoint under each reader at world 1, and the errors of a model with 8 experts."""
    batch, path = _batches(STEPS)[3], Path(directory)
    out: dict = {}
    for spec in readers:
        backend = _backend(spec, world)
        _load(backend, path)
        out[spec] = _logits(backend, batch, _rows(0, 1))
        try:
            _load(_backend(spec, world, _model_k8()), path)
            out[f"{spec}_k8"] = "loaded"
        except ValueError as err:
            out[f"{spec}_k8"] = str(err)
    return out


@pytest.fixture(scope="module")
def ep2_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """World 2, ep_size 2, ZeRO 1: saved after 3 steps, then reloaded at ep_size 1 (ZeRO 1 and 0) and by DDP."""
    directory = tmp_path_factory.mktemp("ep2")
    results = run_distributed(_write_then_reload, 2, str(directory), "ep2-z1", ["ep1-z1", "ep1-z0", "ddp"])
    return directory, results[0]


@pytest.mark.distributed
def test_ep2_checkpoint_records_its_layout_and_each_rank_wrote_what_it_owns(ep2_checkpoint):
    directory, _ = ep2_checkpoint
    manifest = read_manifest(directory)
    assert DenseLayout(**manifest["parts"]["dense"]["layout"]) == DenseLayout("deepspeed", 2, 2, 1, "one_round")
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one format, no other files
    assert {f: m["rank"] for f, m in manifest["files"].items() if f.endswith(".distcp")} == {
        "__0_0.distcp": 0,
        "__1_0.distcp": 1,
    }
    entries = read_metadata(directory).state_dict_metadata
    # the stack [L=2, K=4, I=15] flattened: each EP rank wrote its 4 experts' rows (one box per expert)
    stack = entries["dense.model.inner.deep.0.experts_v"]
    assert list(stack.size) == [2 * 4 * 15] and len(stack.chunks) == 8
    assert sorted((c.offsets[0], c.sizes[0]) for c in stack.chunks) == [(15 * e, 15) for e in range(8)]
    # ZeRO 1 over 2 ranks: the non-expert Adam moments are the two partitions, each in its owner's file, once
    metadata = read_metadata(directory)
    moments = [k for k in entries if k.startswith("dense.optim.") and k.endswith(".exp_avg") and "experts" not in k]
    files = {
        metadata.storage_data[MetadataIndex(k, c.offsets)].relative_path for k in moments for c in entries[k].chunks
    }
    assert moments and files == {"__0_0.distcp", "__1_0.distcp"}
    assert all(sum(c.sizes[0] for c in entries[k].chunks) == entries[k].size[0] for k in moments)  # no overlap


@pytest.mark.distributed
@pytest.mark.parametrize("reader", ["ep1-z1", "ep1-z0", "ddp"])
def test_ep2_checkpoint_resumes_at_ep1_or_ddp_on_the_uninterrupted_curve(ep2_checkpoint, reader):
    _, result = ep2_checkpoint
    torch.testing.assert_close(result[reader]["logits"], result["logits"], atol=1e-6, rtol=0)
    assert result[reader]["losses"] == pytest.approx(result["uninterrupted"], abs=1e-6)


@pytest.mark.distributed
def test_fresh_optimizer_state_would_leave_the_curve(ep2_checkpoint):
    """The control: the curve above depends on the carried Adam state (fresh state moves it by far more)."""
    _, result = ep2_checkpoint
    gaps = [abs(a - b) for a, b in zip(result["fresh_optimizer"], result["uninterrupted"])]
    assert max(gaps) > 1e-4


@pytest.mark.distributed
def test_ep2_checkpoint_evaluates_at_world_1_and_refuses_another_expert_count(ep2_checkpoint):
    directory, result = ep2_checkpoint
    at_world_1 = run_distributed(_read_at_world_1, 1, str(directory), ["ddp", "ep1-z0"])[0]
    for reader in ("ddp", "ep1-z0"):
        torch.testing.assert_close(at_world_1[reader], result["logits"], atol=1e-6, rtol=0)
        error = at_world_1[f"{reader}_k8"]
        assert "\n" not in error
        assert "inner.deep.0.experts_v" in error and "[2, 4, 15]" in error and "[2, 8, 15]" in error, error


@pytest.mark.distributed
def test_bf16_ep2_checkpoint_resumes_at_ep1_with_its_fp32_masters_and_adam_state(tmp_path):
    """bf16 weights, fp32 masters: under ZeRO 1 (fragments) and ZeRO 0 (DeepSpeed's unfused copies)."""
    result = run_distributed(_write_then_reload, 2, str(tmp_path), "ep2-z1-bf16", ["ep1-z1-bf16", "ep1-z0-bf16"])[0]
    for reader in ("ep1-z1-bf16", "ep1-z0-bf16"):
        torch.testing.assert_close(result[reader]["logits"], result["logits"], atol=1e-3, rtol=0)  # bf16 sums
        assert result[reader]["losses"] == pytest.approx(result["uninterrupted"], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(result["fresh_optimizer"], result["uninterrupted"])) > 1e-3


@pytest.mark.distributed
@pytest.mark.parametrize("writer", ["ep1-z2", "ddp"])
def test_ep1_checkpoint_resumes_at_ep2_on_the_uninterrupted_curve(tmp_path, writer):
    result = run_distributed(_write_then_reload, 2, str(tmp_path), writer, ["ep2-z1", "ep2-z0"])[0]
    for reader in ("ep2-z1", "ep2-z0"):
        torch.testing.assert_close(result[reader]["logits"], result["logits"], atol=1e-6, rtol=0)
        assert result[reader]["losses"] == pytest.approx(result["uninterrupted"], abs=1e-6)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stage(backend: DDPDense, train: str) -> None:
    apply_training_stage(backend.inner, StageConfig(name=train, train=train, steps=3))
    backend.refresh()


def _frozen_experts_then_reload(rank: int, world: int, directory: str, readers: list[str]) -> dict:
    """DDP trains the backbone alone (experts and routers frozen: no Adam state), saves, then trains all;
    each reader loads the checkpoint and trains all from it."""
    batches, rows, path = _batches(STEPS), _rows(rank, world), Path(directory)
    records = _Records()
    logging.getLogger("recscale").addHandler(records)
    first = _backend("ddp", world)
    _stage(first, "backbone")
    _train(first, batches[:3], rows)
    _save(first, path)
    _stage(first, "all")
    out: dict = {"uninterrupted": _train(first, batches[3:], rows)}
    for spec in readers:
        records.messages.clear()
        second = _backend(spec, world)
        _load(second, path)
        out[spec] = {"warnings": list(records.messages), "losses": _train(second, batches[3:], rows)}
    return out


@pytest.mark.distributed
def test_parameters_without_saved_optimizer_state_start_fresh_with_a_warning_naming_them(tmp_path):
    result = run_distributed(_frozen_experts_then_reload, 2, str(tmp_path), ["ep2-z1", "ep2-z0"])[0]
    for reader in ("ep2-z1", "ep2-z0"):
        (warning,) = [m for m in result[reader]["warnings"] if "start fresh" in m]
        assert "inner.deep.0.experts_v" in warning and "inner.deep.2.experts_u" in warning, warning
        assert "base" not in warning  # the backbone's state was carried
        # fresh Adam for the experts and routers, carried for the rest: the writer's own continuation
        assert result[reader]["losses"] == pytest.approx(result["uninterrupted"], abs=1e-6)


def _placed(ref: HiLoMoELinear, ep_rank: int, dispatch: str) -> tuple[DeepSpeedHiLoMoELinear, dict]:
    """EP rank ``ep_rank``'s twin of ``ref`` at ep_size 2, built without process groups, and its slots."""
    block = DeepSpeedHiLoMoELinear(copy.deepcopy(ref), ep_size=2, ep_rank=ep_rank, dispatch=dispatch)
    block._ep_group = lambda: None  # type: ignore[method-assign]  # no EP group: nothing is gathered here
    return block, block.expert_slots()


@pytest.mark.parametrize("dispatch", ["one_round", "per_layer"])
def test_expert_slots_name_where_each_local_expert_sits_in_the_reference_stacks(dispatch):
    """Index maths without comms: each local expert's weights are the reference stack's row its slot names,
    and the two EP ranks' slots cover every (layer, expert) once."""
    torch.manual_seed(0)
    ref = HiLoMoELinear(6, 10, num_experts=4, num_layers=3, routing="topk", top_k=2, expert_init_std=0.1)
    covered: list[tuple[int, int]] = []
    for ep_rank in (0, 1):
        block, slots = _placed(ref, ep_rank, dispatch)
        params = dict(block.named_parameters())
        for name, slot in slots.items():
            stack = getattr(ref, slot.reference)
            assert slot.shape == tuple(stack.shape)
            assert torch.equal(params[name], stack[slot.index]), name
            start, numel = slot.span()  # the same row in the flattened stack that checkpoints store
            assert torch.equal(params[name].reshape(-1), stack.reshape(-1)[start : start + numel]), name
            if slot.reference == "experts_v":
                covered.append(slot.index)
    assert sorted(covered) == [(layer, k) for layer in range(3) for k in range(4)]
