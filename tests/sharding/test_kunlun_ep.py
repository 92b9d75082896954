"""Kunlun's routed MoWE under expert parallelism == the single-device reference on the global batch.

The reference is the unconverted ``KunlunDense`` (routed MoWE, 4 experts, top-2, two global layers)
trained with SGD + momentum on the whole batch; the expert-parallel model runs at ep_size 2 under a DeepSpeed
engine on 2 gloo ranks (world 4: two EP groups, each expert held by two ranks whose gradients are
reduced over the expert-data-parallel group), each rank on its share of the batch, with global
balance statistics. Its logits, auxiliary loss, every gradient (experts mapped to their global ids),
the loss curve and the updated weights are the reference's, to float summation order.

SGD rather than Adam: some parameters have a gradient that is zero up to float noise (a key bias
under softmax attention), which Adam's normalised step turns into moves of ±lr in either model.
"""

from __future__ import annotations

import copy
from typing import Any

import deepspeed
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from deepspeed.utils import safe_get_full_grad

from recscale.configs.schema import MoEParallelConfig
from recscale.modules.hilomoe.layer import MoEBackend
from recscale.modules.host_reads import deliberate_reads
from recscale.modules.kunlun.model import KunlunDense
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts
from recscale.sharding.expert_parallel import ExpertParallelMoWE, apply_expert_parallel
from tests.distributed import run_distributed
from tests.host_reads import HostReadCounter
from tests.modules.test_kunlun_model import _inputs, _kunlun

GLOBAL_BATCH, LR, MOMENTUM, EXPERTS = 8, 0.05, 0.9, 4
MOWE = {"partition": "routed", "num_experts": EXPERTS, "top_k": 2, "fm_rank": 3, "fmb_mlp": [16]}


def _model() -> KunlunDense:
    return _kunlun(num_layers=2, mowe=MOWE, events=[]).train()


def _batches(steps: int) -> list[tuple[Any, ...]]:
    out = []
    for step in range(steps):
        dense, pooled, seqs, masks, times, _ = _inputs(GLOBAL_BATCH, seed=10 + step, garbage=False)
        labels = (torch.rand(GLOBAL_BATCH, 1, generator=torch.Generator().manual_seed(step)) < 0.4).float()
        out.append((dense, pooled, seqs, masks, times, labels))
    return out


def _rows(batch: tuple[Any, ...], rows: slice) -> tuple[Any, ...]:
    return tuple({k: v[rows] for k, v in t.items()} if isinstance(t, dict) else t[rows] for t in batch)


def _loss(out: tuple, labels: torch.Tensor) -> torch.Tensor:
    logits, aux, _ = out
    return F.binary_cross_entropy_with_logits(logits, labels) + aux


def _reference_name(name: str, ep: torch.nn.Module, ep_size: int, rank: int) -> str:
    """``<mowe>.moe.deepspeed_moe.experts.deepspeed_experts.<n>.<p>`` -> ``<mowe>.experts.<g>.<p>``."""
    if ".moe." not in name:
        return name
    prefix, _, rest = name.partition(".moe.deepspeed_moe.experts.deepspeed_experts.")
    local, _, param = rest.partition(".")
    block = ep.get_submodule(prefix)
    assert isinstance(block, ExpertParallelMoWE)
    return f"{prefix}.experts.{block.first_expert + int(local)}.{param}"


def _engine(model: torch.nn.Module, zero: int, micro_batch: int) -> Any:
    """A DeepSpeed engine as ``DeepSpeedDense`` builds it: expert parameters in their own optimizer groups."""
    groups = split_params_into_different_moe_groups_for_optimizer({"params": list(model.parameters()), "name": "all"})
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "zero_optimization": {"stage": zero},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at norm 1.0 unless told otherwise
    }
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def _parity(rank: int, world: int, ep_size: int, zero: int, steps: int) -> dict:
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    ref = _model()
    ep = apply_expert_parallel(copy.deepcopy(ref), ep_size, MoEParallelConfig())
    engine = _engine(ep, zero, GLOBAL_BATCH // world)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOMENTUM)
    ref_params = dict(ref.named_parameters())
    out: dict = {"losses": [], "ref_losses": [], "grads": 0.0, "host_reads": []}
    for step, batch in enumerate(_batches(steps)):
        *inputs, labels = batch
        ref_out = ref(*inputs)
        ref_loss = _loss(ref_out, labels)
        ref_opt.zero_grad()
        ref_loss.backward()
        *mine, my_labels = _rows(batch, rows)
        reads = deliberate_reads()
        ep_out = engine(*mine)
        loss = _loss(ep_out, my_labels)
        engine.backward(loss)
        out["host_reads"].append(deliberate_reads() - reads)
        if step == 0:
            out["logits"] = float((ep_out[0] - ref_out[0][rows]).detach().abs().max())
            out["aux"] = abs(float(ep_out[1].detach()) - float(ref_out[1].detach()))
            out["load"] = max(abs(float(v - ref_out[2][k])) for k, v in ep_out[2].items())
        for name, p in ep.named_parameters():
            grad = p.grad if zero == 0 else safe_get_full_grad(p)
            expected = ref_params[_reference_name(name, ep, ep_size, rank)].grad
            out["grads"] = max(out["grads"], float((grad - expected).abs().max()))
        engine.step()
        ref_opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        out["losses"].append(float(mean) / world)
        out["ref_losses"].append(float(ref_loss.detach()))
    out["weights"] = max(
        float((p.detach() - ref_params[_reference_name(n, ep, ep_size, rank)].detach()).abs().max())
        for n, p in ep.named_parameters()
    )

    blocks = [m for m in ep.modules() if isinstance(m, MixtureOfWukongExperts)]
    out["backends"] = sorted({b.backend.value for b in blocks})
    out["local_experts"] = [len(b.local_experts()) for b in blocks if isinstance(b, ExpertParallelMoWE)]
    out["expert_params_tagged"] = all(
        getattr(p, "allreduce", True) is False for n, p in ep.named_parameters() if ".moe." in n
    ) and not any(hasattr(p, "allreduce") for n, p in ep.named_parameters() if ".moe." not in n)
    return out


def _check(results: list[dict]) -> None:
    for r in results:
        assert r["backends"] == [MoEBackend.DEEPSPEED.value] and r["local_experts"] == [EXPERTS // 2] * 2
        assert r["expert_params_tagged"]
        assert r["logits"] < 1e-5 and r["aux"] < 1e-6 and r["load"] < 1e-6, r
        assert r["grads"] < 1e-5, r["grads"]
        assert r["losses"] == pytest.approx(r["ref_losses"], abs=1e-5)
        assert r["weights"] < 1e-6, r["weights"]
        assert r["host_reads"] == [2, 2, 2]  # one split-size read per MoWE layer and step, none in backward


@pytest.mark.distributed
@pytest.mark.parametrize("zero", [0, 2])
def test_kunlun_ep2_at_world_2_matches_the_reference(zero):
    _check(run_distributed(_parity, 2, 2, zero, 3, timeout_s=300))


@pytest.mark.distributed
@pytest.mark.slow
def test_kunlun_ep2_at_world_4_reduces_expert_gradients_over_the_expert_data_parallel_group():
    _check(run_distributed(_parity, 4, 2, 0, 3, timeout_s=400))


def _step_reads(rank: int, world: int) -> dict:
    """Host reads of one training step of the reference model and of the expert-parallel one."""
    ref = _model()
    ep = apply_expert_parallel(copy.deepcopy(ref), 2, MoEParallelConfig())
    engine = _engine(ep, 0, GLOBAL_BATCH // world)
    batch = _batches(1)[0]
    out = {}
    for name, module in (("reference", ref), ("expert_parallel", ep)):
        *inputs, labels = batch if name == "reference" else _rows(batch, slice(rank * 4, rank * 4 + 4))
        counter = HostReadCounter()
        HostReadCounter.tag_model(module)
        before = deliberate_reads()
        counter.start()
        loss = _loss((engine if module is ep else ref)(*inputs), labels)
        if module is ep:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
        counter.stop()
        out[name] = (dict(counter.reads), deliberate_reads() - before)
    return out


@pytest.mark.distributed
def test_a_step_reads_on_the_host_only_the_declared_split_sizes():
    """Routed MoWE on one device (``expert_compute: dense``) reads nothing; under EP only the dispatcher's
    split sizes, once per MoWE layer, and ``deliberate_reads`` accounts for every one of them."""
    for result in run_distributed(_step_reads, 2, timeout_s=300):
        assert result["reference"] == ({}, 0)
        reads, declared = result["expert_parallel"]
        assert declared == 2 and sum(reads.values()) == declared, reads
        assert all("sharding/moe_dispatch.py" in where for where in reads), reads


# --------------------------------------------------------------------------------------------------
# single process: the EP twin at ep_size 1 (no communication) and what apply_expert_parallel refuses
# --------------------------------------------------------------------------------------------------


def test_twin_at_ep_size_1_equals_the_reference_module():
    torch.manual_seed(0)
    from recscale.modules.kunlun.mowe import MoWEOptions

    opts = MoWEOptions(num_experts=4, partition="routed", top_k=2, fm_rank=3, fmb_mlp=[16], expert_compute="sorted")
    ref = MixtureOfWukongExperts(num_in=6, num_out=5, dim=8, opts=opts)
    twin = ExpertParallelMoWE.from_reference(copy.deepcopy(ref), 1, 0)
    x = torch.randn(20, 6, 8)
    (y, aux, diag), (y_ref, aux_ref, diag_ref) = twin(x), ref(x)
    assert torch.equal(y, y_ref) and torch.equal(aux, aux_ref)  # top-2: the same two-term sums
    assert diag.keys() == diag_ref.keys()
    assert twin.flops() == ref.flops() == twin.executed_flops()


def test_expert_slots_name_the_reference_experts_each_local_expert_is():
    """Index maths without comms: each local expert tensor is the reference tensor its slot names, and the
    two EP ranks' slots cover every reference expert tensor once."""
    torch.manual_seed(0)
    from recscale.modules.kunlun.mowe import MoWEOptions

    ref = MixtureOfWukongExperts(num_in=6, num_out=5, dim=8, opts=MoWEOptions(num_experts=4, partition="routed"))
    reference = {k: v for k, v in ref.state_dict().items() if k.startswith("experts.")}
    covered: list[str] = []
    for ep_rank in (0, 1):
        twin = ExpertParallelMoWE.from_reference(copy.deepcopy(ref), 2, ep_rank)
        state = twin.state_dict()
        for name, slot in twin.expert_slots().items():
            assert slot.index == () and slot.shape == tuple(reference[slot.reference].shape)
            assert torch.equal(state[name], reference[slot.reference]), name
            covered.append(slot.reference)
        assert all(k in twin.expert_slots() for k in state if ".moe." in k)  # every expert tensor has a slot
    assert sorted(covered) == sorted(reference)


def test_expert_parallel_needs_routed_mowe_and_the_dropless_exchange():
    fixed = _kunlun(num_layers=1, mowe={"partition": "strided", "num_experts": 2}, events=[])
    with pytest.raises(ValueError, match="sharding.ep_size: 2 needs model.kunlun.mowe.partition: routed"):
        apply_expert_parallel(fixed, 2, MoEParallelConfig(), ep_rank=0)
    routed = _kunlun(num_layers=1, mowe=MOWE, events=[])
    with pytest.raises(ValueError, match="sharding.moe.exchange: 'padded' is HiLoMoE's"):
        apply_expert_parallel(routed, 2, MoEParallelConfig(exchange="padded"), ep_rank=0)
    assert apply_expert_parallel(routed, 1, MoEParallelConfig()) is routed  # ep 1: the reference stays
    assert not any(isinstance(m, ExpertParallelMoWE) for m in routed.modules())
