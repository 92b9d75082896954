"""Learned task weights (homoscedastic uncertainty): the loss and the gradient of each log variance by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recscale.modules.task_uncertainty import TaskUncertainty
from recscale.modules.tasks import Task, TaskLoss

TASKS = [Task("click", weight=3.0), Task("buy", weight=1.0, given=0), Task("watch", loss="regression", weight=1.0)]


class _Dense(nn.Module):
    """A stand-in dense arch: three logits, no auxiliary loss, one diagnostic."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor):
        return self.linear(dense), dense.new_zeros(()), {"inner": dense.new_ones(())}


def _batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=g)
    click = (torch.rand(16, generator=g) < 0.5).float()
    labels = torch.stack([click, click * (torch.rand(16, generator=g) < 0.5).float(), torch.rand(16, generator=g)], 1)
    return logits, labels, torch.ones(16)


def test_the_loss_and_the_log_variance_gradients_match_the_hand_computation():
    logits, labels, weights = _batch()
    s = torch.tensor([0.3, -0.5, 1.2])
    per_task = []  # the fixed-weight loss's terms, batch-normalised
    for t, task in enumerate(TASKS):
        z, y = logits[:, t].double(), labels[:, t].double()
        rows = (labels[:, 0] == 1).double() if task.given >= 0 else torch.ones(16, dtype=torch.float64)
        if task.loss == "bce":
            ell = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        else:
            ell = (z - y).square()
        per_task.append(float((ell * rows).sum() / 16))
    w = [t.weight / 5.0 for t in TASKS]
    c = [1.0, 1.0, 0.5]  # classification form for bce, Gaussian form (1/2σ²) for regression
    expected = sum(w[t] * (c[t] * math.exp(-float(s[t])) * per_task[t] + float(s[t]) / 2) for t in range(3))
    grads = [w[t] * (-c[t] * math.exp(-float(s[t])) * per_task[t] + 0.5) for t in range(3)]

    columns = torch.cat([logits, s.expand(16, 3)], dim=1).requires_grad_()  # what TaskUncertainty emits
    loss = TaskLoss(TASKS, uncertainty=True)(columns, labels, weights)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert columns.grad[0, 3:].tolist() == pytest.approx(grads, rel=1e-5)  # s is read from row 0 ...
    assert columns.grad[1:, 3:].abs().sum() == 0  # ... and only there
    # s = 0 with the fixed weights is the fixed-weight loss plus nothing but the halved regression term
    zero = torch.cat([logits, torch.zeros(16, 3)], dim=1)
    fixed = TaskLoss(TASKS)(logits, labels, weights)
    assert float(TaskLoss(TASKS, uncertainty=True)(zero, labels, weights)) == pytest.approx(
        float(fixed) - w[2] * per_task[2] / 2, rel=1e-5
    )


def test_the_wrapper_appends_s_reports_exp_minus_s_and_serving_reads_the_tasks_only():
    torch.manual_seed(0)
    dense = TaskUncertainty(_Dense(), ["click", "buy", "watch"])
    with torch.no_grad():
        dense.log_variance.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    x = torch.randn(5, 2)
    logits, _, diagnostics = dense(x, x)
    assert logits.shape == (5, 6)
    assert torch.equal(logits[:, :3], dense.inner(x, x)[0])
    assert torch.equal(logits[:, 3:], dense.log_variance.detach().expand(5, 3))
    assert diagnostics["inner"] == 1
    assert [float(diagnostics[f"task_weight/{n}"]) for n in ("click", "buy", "watch")] == pytest.approx(
        [1.0, 0.5, math.e]
    )
    assert "task_weight/click" not in dense.eval()(x, x)[2]  # evaluation records carry no weights
    loss = TaskLoss(TASKS, uncertainty=True)
    assert torch.equal(loss.predictions(logits), logits[:, :3])
    _, labels, _ = _batch()
    loss(logits, labels[:5], torch.ones(5)).backward()
    assert dense.log_variance.grad is not None and (dense.log_variance.grad != 0).all()
