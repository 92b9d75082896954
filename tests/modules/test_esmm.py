"""ESMM's product form: the p_ctcvr loss against numpy, large logits, gradients into both towers, evaluation columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recscale.configs import load_config
from recscale.configs.schema import TaskConfig
from recscale.configs.tasks import task_problems
from recscale.modules.esmm import ctcvr_bce, ctcvr_logit
from recscale.modules.tasks import Task, TaskLoss

TASKS = [Task("click"), Task("purchase", given=0, esmm=True)]


def _numpy_ctcvr_bce(zc: np.ndarray, zv: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Plain float64 BCE of sigmoid(zc) * sigmoid(zv) (moderate logits only: it overflows otherwise)."""
    p = 1 / (1 + np.exp(-zc)) / (1 + np.exp(-zv))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_the_ctcvr_loss_is_the_bce_of_the_product():
    rng = np.random.default_rng(0)
    zc, zv = rng.normal(0, 3, 200), rng.normal(0, 3, 200)
    y = (rng.random(200) < 0.3).astype(np.float64)
    got = ctcvr_bce(torch.tensor(zc, dtype=torch.float32), torch.tensor(zv, dtype=torch.float32), torch.tensor(y))
    np.testing.assert_allclose(got.double().numpy(), _numpy_ctcvr_bce(zc, zv, y), rtol=1e-4, atol=1e-6)
    logit = ctcvr_logit(torch.tensor(zc), torch.tensor(zv)).numpy()
    p = 1 / (1 + np.exp(-zc)) / (1 + np.exp(-zv))
    np.testing.assert_allclose(logit, np.log(p / (1 - p)), rtol=1e-6, atol=1e-8)


def test_large_logits_give_finite_exact_losses_and_gradients():
    zc = torch.tensor([100.0, -100.0, 100.0, 30.0, 80.0, -80.0], requires_grad=True)
    zv = torch.tensor([100.0, -100.0, -100.0, 40.0, 80.0, 80.0], requires_grad=True)
    for y, expected in (
        # y = 0: -log(1 - p); 1 - σ(a)σ(b) = σ(-a) + σ(a)σ(-b), ≈ e^-a + e^-b when both are large
        (0.0, [100 - np.log(2), 0.0, 0.0, 30 - np.log1p(np.exp(-10)), 80 - np.log(2), 0.0]),
        # y = 1: -log p = softplus(-a) + softplus(-b)
        (1.0, [0.0, 200.0, 100.0, 0.0, 0.0, 80.0]),
    ):
        zc.grad = zv.grad = None
        loss = ctcvr_bce(zc, zv, torch.full((6,), y))
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(zc.grad).all() and torch.isfinite(zv.grad).all()
        np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    # y = 1 at (-100, -100): d/dz of softplus(-z) is -σ(-z) = -1 for both towers
    assert zc.grad[1] == pytest.approx(-1.0) and zv.grad[1] == pytest.approx(-1.0)


def test_the_task_loss_trains_ctcvr_on_every_row_and_both_towers_get_its_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 2, generator=g, dtype=torch.float64).float().requires_grad_()
    click = (torch.rand(32, generator=g) < 0.4).float()
    labels = torch.stack([click, click * (torch.rand(32, generator=g) < 0.5).float()], dim=1)
    weights = torch.ones(32)
    weights[-2:] = 0  # padding
    loss = TaskLoss(TASKS)(logits, labels, weights)
    zc, zv = logits.detach().double().numpy().T
    y_click, y_buy = labels.double().numpy().T
    ctr = np.logaddexp(0, -zc) * y_click + np.logaddexp(0, zc) * (1 - y_click)  # BCE with logits
    w = weights.double().numpy()
    expected = 0.5 * (w * ctr).sum() / 32 + 0.5 * (w * _numpy_ctcvr_bce(zc, zv, y_click * y_buy)).sum() / 32
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # the conversion tower learns on unclicked rows too (mask mode gives them no gradient)
    unclicked = (click == 0) & (weights > 0)
    assert (logits.grad[unclicked, 1].abs() > 0).all()
    masked = TaskLoss([TASKS[0], Task("purchase", given=0)])
    plain_logits = logits.detach().clone().requires_grad_()
    masked(plain_logits, labels, weights).backward()
    assert (plain_logits.grad[unclicked, 1] == 0).all()
    # the click tower gets the ctcvr term's gradient beside its own: differs from the mask mode's
    assert not torch.allclose(logits.grad[:, 0], plain_logits.grad[:, 0])


def test_evaluation_reports_cvr_on_clicks_and_ctcvr_on_every_row():
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-1.0, 3.0], [-2.0, 0.0]])
    oracle = torch.tensor([[0.8, 0.6], [0.5, 0.3], [0.2, 0.9], [0.1, 0.5]])
    out_logits, out_labels, masks, tasks, out_oracle = TaskLoss(TASKS).evaluation_columns(logits, labels, None, oracle)
    assert [t.name for t in tasks] == ["click", "purchase", "purchase_ctcvr"]
    assert tasks[2].weight == 0.0  # reported, not in the task-weighted headline
    assert masks[:, 1].tolist() == [1, 1, 0, 0] and masks[:, 2].tolist() == [1, 1, 1, 1]
    assert out_labels[:, 2].tolist() == [1, 0, 0, 0]
    p = torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1])
    torch.testing.assert_close(torch.sigmoid(out_logits[:, 2]), p)
    torch.testing.assert_close(out_oracle[:, 2], oracle[:, 0] * oracle[:, 1])


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([TaskConfig(name="click"), TaskConfig(name="buy", given_mode="esmm")], "esmm needs given"),
        (
            [TaskConfig(name="click"), TaskConfig(name="buy", given="click", loss="regression", given_mode="esmm")],
            "esmm needs a bce task",
        ),
        (
            [
                TaskConfig(name="click", given="view"),
                TaskConfig(name="view"),
                TaskConfig(name="buy", given="click", given_mode="esmm"),
            ],
            "esmm needs task 'click' on every row",
        ),
        (
            [TaskConfig(name="click", domains=[0]), TaskConfig(name="buy", given="click", given_mode="esmm")],
            "applies to domains [0] only",
        ),
    ],
)
def test_invalid_esmm_configs_are_refused_by_key(tasks, message):
    cfg = load_config("multitask_synthetic")
    cfg.model.tasks = tasks
    cfg.data.features.labels = [t.name for t in tasks]
    cfg.data.features.value_labels = [t.name for t in tasks if t.loss == "regression"]
    problems = task_problems(cfg)
    assert any(p.startswith("model.tasks[") and ".given_mode: " in p and message in p for p in problems), problems
