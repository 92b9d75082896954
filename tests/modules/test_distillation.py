"""Learning from a teacher through an auxiliary head: the loss by hand, the scaled gradient, the adapter's
stop-gradient, the served head untouched by the teacher, FLOPs against FlopCounterMode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from recscale.modules.distillation import DistilledDense, StudentAdapter, scale_grad
from recscale.modules.flops import total
from recscale.modules.tasks import Distillation, Task, TaskLoss
from tests.distributed import run_distributed


class _Arch(torch.nn.Module):
    """A dense arch with ``represent`` and ``head``: r = tanh(W [dense; pooled])."""

    def __init__(self, n_in: int = 6, width: int = 5, heads: int = 1) -> None:
        super().__init__()
        self.body = torch.nn.Linear(n_in, width)
        self.head = torch.nn.Linear(width, heads)
        self.out_dim = width

    def represent(self, dense, pooled):
        return torch.tanh(self.body(torch.cat([dense, pooled], dim=1)))

    def flops(self):
        from recscale.modules.flops import linear_module

        return {"body": linear_module(self.body, input_grad=False), "head": linear_module(self.head)}


def _inputs(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense, pooled = torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g)
    labels = (torch.rand(n, 1, generator=g) < 0.3).float()
    teacher = torch.randn(n, 1, generator=g)
    teacher[::4] = float("nan")  # cache misses
    return dense, pooled, labels, teacher


def _soft_bce(z, p, eps):
    return float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(p * (1 - eps) + eps / 2)))


@pytest.mark.parametrize("miss_target", ["skip", "label"])
@pytest.mark.parametrize("adapter", [False, True])
def test_the_auxiliary_loss_equals_its_formula_row_by_row(adapter, miss_target):
    torch.manual_seed(0)
    model = DistilledDense(_Arch(), 1, grad_scale=3.0, adapter_hidden=4 if adapter else 0)
    dense, pooled, labels, teacher = _inputs()
    logits = model(dense, pooled, teacher)[0]
    assert logits.shape == (32, 4 if adapter else 2)
    lam, alpha, eps = 0.7, 2.5, 0.05
    loss = TaskLoss([Task("click")], "batch", lam, eps, Distillation("auxiliary", alpha, adapter, miss_target))
    got = float(loss(logits.detach(), labels, torch.ones(32), teacher_BT=teacher))
    n, want = 32, 0.0
    for b in range(n):
        z = logits[b].tolist()
        y = float(labels[b, 0])
        want += float(F.binary_cross_entropy_with_logits(torch.tensor(z[0]), torch.tensor(y))) / n
        if math.isnan(float(teacher[b, 0])):
            if miss_target == "label":  # the distillation heads learn the label; the adapter nothing
                want += lam * _soft_bce(z[1], y, eps) / n
                want += lam * _soft_bce(z[2], y, eps) / n if adapter else 0.0
            continue
        p = 1 / (1 + math.exp(-float(teacher[b, 0])))
        want += lam * _soft_bce(z[1], min(1.0, alpha * p), eps) / n
        if adapter:
            want += float(F.binary_cross_entropy_with_logits(torch.tensor(z[3]), torch.tensor(y))) / n
            want += lam * _soft_bce(z[2], 1 / (1 + math.exp(-z[3])), eps) / n
    assert got == pytest.approx(want, rel=1e-5)


def test_the_served_head_gets_no_teacher_gradient_and_the_trunk_a_scaled_one():
    dense, pooled, labels, teacher = _inputs()
    grads = {}
    for beta in (1.0, 4.0):
        torch.manual_seed(0)
        model = DistilledDense(_Arch(), 1, grad_scale=beta)
        logits = model(dense, pooled, teacher)[0]
        hit = torch.isfinite(teacher)
        target = torch.sigmoid(torch.nan_to_num(teacher))
        kd = F.binary_cross_entropy_with_logits(logits[:, 1:2], target, reduction="none")
        (kd * hit).sum().backward()  # the distillation term alone
        assert torch.all(model.arch.head.weight.grad == 0)  # the served head learns nothing from it
        grads[beta] = (model.arch.body.weight.grad.clone(), model.distill.weight.grad.clone())
    torch.testing.assert_close(grads[4.0][0], 4.0 * grads[1.0][0])  # into the trunk: scaled by β
    torch.testing.assert_close(grads[4.0][1], grads[1.0][1])  # the head's own weights: unscaled
    assert grads[1.0][0].abs().sum() > 0


def test_the_adapter_learns_only_from_labels_and_the_second_head_does_not_train_it():
    torch.manual_seed(0)
    model = DistilledDense(_Arch(), 1, adapter_hidden=4)
    dense, pooled, labels, teacher = _inputs()
    logits = model(dense, pooled, teacher)[0]
    # the second head's term alone: its target is the adapter's probability under stop-gradient
    loss = TaskLoss([Task("click")], "batch", 1.0, 0.0, Distillation("auxiliary", 1.0, True))
    hit = torch.isfinite(teacher).float()
    second = loss._soft_bce(logits[:, 2:3], torch.sigmoid(logits[:, 3:4].detach()), hit)
    second.backward(retain_graph=True)
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.adapter.parameters())
    assert model.second.weight.grad.abs().sum() > 0
    # the whole loss does train the adapter, and nothing of the student flows into it but labels
    model.zero_grad()
    loss(logits, labels, torch.ones(32), teacher_BT=teacher).backward()
    assert model.adapter.w2.grad.abs().sum() > 0


def test_without_a_teacher_input_only_the_served_logits_come_out():
    torch.manual_seed(0)
    model = DistilledDense(_Arch(), 1, adapter_hidden=4)
    dense, pooled, _, teacher = _inputs()
    served = model(dense, pooled)[0]
    both = model(dense, pooled, teacher)[0]
    torch.testing.assert_close(served, both[:, :1])
    loss = TaskLoss([Task("click")], distillation=Distillation("auxiliary", 1.0, True))
    torch.testing.assert_close(loss.predictions(both), served)


def test_an_arch_without_a_representation_is_refused_by_name():
    with pytest.raises(ValueError, match="model.teacher.head: auxiliary"):
        DistilledDense(torch.nn.Linear(3, 1), 1)


def test_scale_grad_is_the_identity_forward():
    x = torch.randn(4, requires_grad=True)
    y = scale_grad(x, 5.0)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), 5.0))


@pytest.mark.parametrize("adapter", [0, 8])
def test_flops_equal_flop_counter_mode(adapter):
    torch.manual_seed(0)
    model = DistilledDense(_Arch(n_in=6, width=16, heads=1), 2, adapter_hidden=adapter)
    model.arch.head = torch.nn.Linear(16, 2)
    dense, pooled = torch.randn(8, 2), torch.randn(8, 4)
    teacher = torch.randn(8, 2)
    analytic = total(model.flops())
    with FlopCounterMode(display=False) as counter:
        model(dense, pooled, teacher)[0].sum().backward()
    # FlopCounterMode counts matmuls; the adapter is elementwise (counted analytically, not by the mode)
    adapter_flops = total({"a": StudentAdapter(2, adapter).flops()}).train if adapter else 0
    assert counter.get_total_flops() == (analytic.train - adapter_flops) * 8


def _reference_adam_steps(adapter: StudentAdapter, batches, lr: float) -> list[torch.Tensor]:
    """The adapter's parameters after torch's Adam on ``Σ w · BCE`` of each ``(z, y, w)`` batch in turn."""
    params = [torch.nn.Parameter(getattr(adapter, n).detach().clone()) for n in StudentAdapter.PARAMS]
    opt = torch.optim.Adam(params, lr=lr)
    for z, y, w in batches:
        opt.zero_grad()
        per = F.binary_cross_entropy_with_logits(StudentAdapter._logits(z, *params), y, reduction="none")
        (per * w).sum().backward()
        opt.step()
    return [p.detach() for p in params]


def test_the_adapters_own_step_is_torch_adam_on_its_label_loss():
    torch.manual_seed(0)
    adapter = StudentAdapter(2, 4, own_lr=0.05)
    assert not any(p.requires_grad for p in adapter.parameters())  # the model's loss cannot train it
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(16, 2, generator=g),
            (torch.rand(16, 2, generator=g) < 0.4).float(),
            torch.rand(16, 2, generator=g),
        )
        for _ in range(3)
    ]
    want = _reference_adam_steps(adapter, batches, 0.05)
    for z, y, w in batches:
        adapter.own_step(z, y, w)
    for name, expected in zip(StudentAdapter.PARAMS, want):
        torch.testing.assert_close(getattr(adapter, name), expected, rtol=1e-5, atol=1e-6)
    assert int(adapter.adam_steps) == 3 and "exp_avg_sq_w1" in adapter.state_dict()  # checkpoints carry its state


def test_adapter_update_before_steps_the_adapter_first_and_leaves_it_out_of_the_loss():
    torch.manual_seed(0)
    model = DistilledDense(_Arch(), 1, adapter_hidden=4, adapter_lr=0.05)
    dense, pooled, labels, teacher = _inputs()
    loss = TaskLoss([Task("click")], "batch", 1.0, 0.0, Distillation("auxiliary", 1.0, True, "skip", True))
    weights = loss.adapter_row_weights(labels, torch.ones(32), None, teacher)
    hit = torch.isfinite(teacher)
    torch.testing.assert_close(weights, hit.float() / 32)  # the joint loss's weights: scored rows over the batch
    z = torch.nan_to_num(teacher, nan=0.0)
    stepped = StudentAdapter(1, 4, own_lr=0.05)
    stepped.load_state_dict(model.adapter.state_dict())
    stepped.own_step(z, labels, weights)
    logits = model(dense, pooled, teacher, (labels, weights))[0]
    # the second head learns the adapter's value after this step's update, not before it
    torch.testing.assert_close(logits[:, 3:4], stepped(z))
    torch.testing.assert_close(model.adapter.w1, stepped.w1)
    # the model's loss is the joint one without the adapter's label term, and sends it no gradient
    joint = TaskLoss([Task("click")], "batch", 1.0, 0.0, Distillation("auxiliary", 1.0, True, "skip", False))
    fresh = F.binary_cross_entropy_with_logits(logits[:, 3:4], labels, reduction="none")
    value = loss(logits, labels, torch.ones(32), teacher_BT=teacher)
    torch.testing.assert_close(
        value, joint(logits, labels, torch.ones(32), teacher_BT=teacher) - (fresh * hit).sum() / 32
    )
    value.backward()
    assert all(p.grad is None for p in model.adapter.parameters()) and model.second.weight.grad.abs().sum() > 0
    # evaluation never steps it
    model.eval()
    model(dense, pooled, teacher, (labels, weights))
    torch.testing.assert_close(model.adapter.w1, stepped.w1)


def _two_rank_adapter_step(rank: int, world: int, state: dict, batches: list) -> dict:
    from recscale.sharding.apply import average_adapter_gradients

    adapter = StudentAdapter(2, 4, own_lr=0.05)
    adapter.load_state_dict(state)
    average_adapter_gradients(adapter)  # what parallelize() does at world size > 1
    for per_rank in batches:
        z, y, w = per_rank[rank]
        adapter.own_step(z, y, w)
    return {k: v.clone() for k, v in adapter.state_dict().items()}


@pytest.mark.distributed
def test_two_ranks_step_the_adapter_as_one_process_on_both_batches():
    torch.manual_seed(0)
    adapter = StudentAdapter(2, 4, own_lr=0.05)
    g = torch.Generator().manual_seed(2)

    def part():
        return torch.randn(8, 2, generator=g), (torch.rand(8, 2, generator=g) < 0.4).float(), torch.full((8, 2), 1 / 8)

    batches = [[part(), part()] for _ in range(2)]
    got = run_distributed(_two_rank_adapter_step, 2, adapter.state_dict(), batches)
    assert all(torch.equal(got[0][k], got[1][k]) for k in got[0])  # every rank's adapter stays the same
    # one process on the 16 rows, each weighted 1/16: the mean of the ranks' mean gradients
    joined = [tuple(torch.cat([a, b]) for a, b in zip(*pair)) for pair in batches]
    want = _reference_adam_steps(adapter, [(z, y, w / 2) for z, y, w in joined], 0.05)
    for name, expected in zip(StudentAdapter.PARAMS, want):
        torch.testing.assert_close(got[0][name], expected, rtol=1e-5, atol=1e-6)
