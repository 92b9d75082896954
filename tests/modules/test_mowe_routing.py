"""Routed MoWE without host synchronisation: ``dense`` and ``sorted`` expert compute against the old loop.

The old routed path ran ``torch.nonzero(top_e == e)`` per expert (a device-to-host sync each on a GPU)
and ``index_add`` of each expert's weighted outputs. ``sorted`` must equal it bitwise (each expert
sees exactly the same rows); ``dense`` runs every expert on the whole batch (no sync at all), equal
bitwise where every example reaches every expert, and to float rounding otherwise (a BLAS may round
one row differently in a batch of another size).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from recscale.modules.host_reads import deliberate_reads
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts, MoWEOptions

HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.numpy,
}


class CountHostReads(TorchFunctionMode):
    """Counts calls that read a tensor's values on the host (a sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in HOST_READS:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _old_routed(mowe: MixtureOfWukongExperts, x_BID: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous implementation: one ``nonzero`` per expert, ``index_add`` of its weighted outputs."""
    assert mowe.router is not None
    num_experts, k = len(mowe.experts), mowe.opts.top_k
    probs_BE = torch.softmax(mowe.router(x_BID.mean(dim=1)).float(), dim=-1)
    top_p_BK, top_e_BK = probs_BE.topk(k, dim=-1)
    weights_BK = (top_p_BK / top_p_BK.sum(dim=-1, keepdim=True)).to(x_BID.dtype)
    out_BnD = x_BID.new_zeros(x_BID.shape[0], mowe.num_out, x_BID.shape[2])
    for e, expert in enumerate(mowe.experts):
        rows, slot = torch.nonzero(top_e_BK == e, as_tuple=True)
        y = expert(x_BID[rows]) * weights_BK[rows, slot].view(-1, 1, 1)
        out_BnD = out_BnD.index_add(0, rows, y)
    load_E = (
        torch.zeros(num_experts).scatter_add_(0, top_e_BK.flatten(), torch.ones(top_e_BK.numel())) / top_e_BK.numel()
    )
    aux = num_experts * (load_E * probs_BE.mean(dim=0)).sum() * mowe.opts.load_balance_weight
    return out_BnD, aux


def _mowe(num_experts: int, top_k: int, compute: str, seed: int = 0) -> MixtureOfWukongExperts:
    torch.manual_seed(seed)
    opts = MoWEOptions(
        num_experts=num_experts,
        partition="routed",
        top_k=top_k,
        num_layers=2,
        fm_rank=3,
        fmb_mlp=[16],
        expert_compute=compute,
    )
    return MixtureOfWukongExperts(num_in=7, num_out=5, dim=8, opts=opts)


def _input(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 7, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("num_experts", "top_k", "batch"), [(4, 1, 33), (4, 2, 64), (6, 3, 9), (8, 2, 3)])
def test_sorted_compute_equals_the_old_nonzero_loop_bitwise(num_experts: int, top_k: int, batch: int) -> None:
    mowe = _mowe(num_experts, top_k, "sorted")
    x = _input(batch)
    out, aux, diagnostics = mowe(x)
    old_out, old_aux = _old_routed(mowe, x)
    assert torch.equal(out, old_out)
    torch.testing.assert_close(aux, old_aux, rtol=1e-6, atol=0)
    if batch * top_k < num_experts * 2:  # (8, 2, 3): some experts get no example; they run on 0 rows
        assert min(float(v) for v in diagnostics.values()) == 0.0


def test_dense_compute_equals_the_old_loop_bitwise_when_every_example_reaches_every_expert() -> None:
    mowe = _mowe(3, 3, "dense")
    x = _input(40)
    assert torch.equal(mowe(x)[0], _old_routed(mowe, x)[0])


@pytest.mark.parametrize(("num_experts", "top_k"), [(4, 1), (4, 2), (6, 3)])
def test_dense_and_sorted_compute_agree_in_outputs_and_gradients(num_experts: int, top_k: int) -> None:
    dense, x = _mowe(num_experts, top_k, "dense"), _input(50)
    ordered = copy.deepcopy(dense)
    ordered.opts = MoWEOptions(**{**dense.opts.__dict__, "expert_compute": "sorted"})
    outs = []
    for mowe in (dense, ordered):
        y, aux, _ = mowe(x)
        (y.square().mean() + aux).backward()
        outs.append(y.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[0], _old_routed(dense, x)[0], rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(dense.named_parameters(), ordered.parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_compute_reads_nothing_on_the_host_and_sorted_reads_once() -> None:
    x = _input(32)
    for compute, expected in (("dense", 0), ("sorted", 1)):
        mowe = _mowe(4, 2, compute)
        before = deliberate_reads()
        with CountHostReads() as reads:
            y, aux, _ = mowe(x)
            (y.sum() + aux).backward()
        assert len(reads.calls) == expected, (compute, reads.calls)
        assert deliberate_reads() - before == expected  # the one read is the declared one


@pytest.mark.parametrize("compute", ["dense", "sorted"])
def test_executed_flops_count_what_runs(compute: str) -> None:
    mowe, x = _mowe(4, 2, compute), _input(12)
    with FlopCounterMode(display=False) as counter:
        mowe(x)
    executed = mowe.executed_flops().forward * 12
    assert counter.get_total_flops() == executed
    if compute == "dense":  # every expert on every example: E / top_k times the active expert work
        router = 2 * 8 * 4
        assert mowe.executed_flops().forward - router == 2 * (mowe.flops().forward - router)
    else:
        assert mowe.executed_flops() == mowe.flops()
