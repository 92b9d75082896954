"""The multi-task loss: weights, bce and regression terms, domain and ``given`` masks, both normalisations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recscale.modules.model import weighted_bce
from recscale.modules.tasks import Task, TaskLoss, default_tasks


def _batch(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g)
    labels = torch.stack(
        [
            (torch.rand(n, generator=g) < 0.4).float(),  # click
            (torch.rand(n, generator=g) < 0.5).float(),  # purchase (only meaningful given a click)
            torch.rand(n, generator=g) * 5,  # watch time
        ],
        dim=1,
    )
    weights = torch.ones(n)
    weights[-5:] = 0  # padding
    domain = torch.randint(0, 3, (n,), generator=g)
    return logits, labels, weights, domain


TASKS = [
    Task("click", weight=2.0),
    Task("purchase", weight=1.0, given=0, domains=(0, 2)),
    Task("watch", loss="regression", weight=0.5),
]


def _by_hand(logits, labels, weights, domain, normalization):
    """The documented formula, one task and one row at a time."""
    total_weight = sum(t.weight for t in TASKS)
    out = 0.0
    n = logits.shape[0]
    for t, task in enumerate(TASKS):
        num, den = 0.0, 0.0
        for b in range(n):
            applies = (not task.domains or int(domain[b]) in task.domains) and (
                task.given < 0 or labels[b, task.given] == 1
            )
            if not applies:
                continue
            z, y = float(logits[b, t]), float(labels[b, t])
            if task.loss == "bce":
                term = float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)))
            else:
                term = (z - y) ** 2
            num += float(weights[b]) * term
            den += float(weights[b])
        per_task = num / n if normalization == "batch" else num / max(den, 1.0)
        out += task.weight / total_weight * per_task
    return out


@pytest.mark.parametrize("normalization", ["batch", "rows"])
def test_the_loss_follows_the_documented_formula(normalization):
    logits, labels, weights, domain = _batch()
    loss = TaskLoss(TASKS, normalization)(logits, labels, weights, domain)
    assert float(loss) == pytest.approx(_by_hand(logits, labels, weights, domain, normalization), rel=1e-6)


def test_masks_follow_domains_and_the_given_label():
    logits, labels, weights, domain = _batch()
    masks = TaskLoss(TASKS).masks(labels, domain)
    assert torch.equal(masks[:, 0], torch.ones(len(labels)))
    expected = ((domain == 0) | (domain == 2)) & (labels[:, 0] == 1)
    assert torch.equal(masks[:, 1].bool(), expected)
    assert torch.equal(masks[:, 2], torch.ones(len(labels)))


def test_equal_bce_tasks_reduce_to_the_plain_weighted_bce():
    logits, labels, weights, _ = _batch()
    labels = labels[:, :2]
    got = TaskLoss(default_tasks(2))(logits[:, :2], labels, weights)
    assert float(got) == pytest.approx(float(weighted_bce(logits[:, :2], labels, weights)), rel=1e-6)


def test_a_task_of_weight_zero_gets_no_gradient():
    logits, labels, weights, domain = _batch()
    logits.requires_grad_(True)
    tasks = [Task("click"), Task("purchase", weight=0.0), Task("watch", loss="regression")]
    TaskLoss(tasks)(logits, labels, weights, domain).backward()
    assert torch.all(logits.grad[:, 1] == 0)
    assert torch.any(logits.grad[:, 0] != 0) and torch.any(logits.grad[:, 2] != 0)
    assert torch.all(logits.grad[-5:] == 0)  # padding rows


def test_the_rows_of_a_masked_task_carry_its_whole_gradient():
    logits, labels, weights, domain = _batch()
    logits.requires_grad_(True)
    TaskLoss(TASKS)(logits, labels, weights, domain).backward()
    outside = TaskLoss(TASKS).masks(labels, domain)[:, 1] == 0
    assert torch.all(logits.grad[outside, 1] == 0)
    assert torch.any(logits.grad[~outside, 1] != 0)


def test_the_teacher_adds_a_smoothed_soft_label_term_on_the_rows_it_scored():
    logits, labels, weights, domain = _batch()
    g = torch.Generator().manual_seed(9)
    teacher = torch.randn(len(labels), 3, generator=g)
    teacher[::3] = float("nan")  # cache misses
    plain = TaskLoss(TASKS)(logits, labels, weights, domain)
    got = TaskLoss(TASKS, teacher_weight=0.7, smoothing=0.1)(logits, labels, weights, domain, None, teacher)
    masks = TaskLoss(TASKS).masks(labels, domain)
    total_weight = sum(t.weight for t in TASKS)
    kd = 0.0
    for t, task in enumerate(TASKS):
        if task.loss != "bce":
            continue  # no soft label for a regression task
        term = 0.0
        for b in range(len(labels)):
            if torch.isnan(teacher[b, t]) or masks[b, t] == 0:
                continue
            soft = 0.9 * torch.sigmoid(teacher[b, t]) + 0.05
            term += float(weights[b]) * float(F.binary_cross_entropy_with_logits(logits[b, t], soft))
        kd += task.weight / total_weight * term / len(labels)
    assert float(got) == pytest.approx(float(plain) + 0.7 * kd, rel=1e-6)


def test_a_teacher_that_scored_nothing_changes_nothing():
    logits, labels, weights, domain = _batch()
    logits.requires_grad_(True)
    missing = torch.full((len(labels), 3), float("nan"))
    loss = TaskLoss(TASKS, teacher_weight=1.0)(logits, labels, weights, domain, None, missing)
    assert float(loss.detach()) == float(TaskLoss(TASKS)(logits, labels, weights, domain).detach())
    loss.backward()
    assert torch.isfinite(logits.grad).all()  # the NaN of a miss never reaches a gradient


def test_teacher_inputs_are_clipped_logits_and_a_hit_flag():
    from recscale.modules.model import teacher_inputs

    teacher = torch.tensor([[0.5, -20.0], [float("nan"), float("nan")], [30.0, 1.0]])
    got = teacher_inputs(teacher, clip=8.0)
    assert torch.equal(got, torch.tensor([[0.5, -8.0, 1.0], [0.0, 0.0, 0.0], [8.0, 1.0, 1.0]]))
