"""Per-task, per-domain metrics: scikit-learn on the rows where each task applies, equal on 1, 2 and 3 ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recscale.modules.tasks import Task, TaskLoss
from recscale.trainer.task_metrics import task_metrics
from tests.distributed import run_distributed

TASKS = [
    Task("click", weight=2.0),
    Task("purchase", weight=1.0, given=0),
    Task("watch", loss="regression", weight=1.0),
    Task("search_click", weight=1.0, domains=(2,)),
]
DOMAINS = ["feed", "stories", "search"]


def _data(n: int = 3000, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.round(torch.randn(n, 4, generator=g) * 8) / 8  # ties
    oracle = torch.sigmoid(logits + 0.4 * torch.randn(n, 4, generator=g))
    labels = (torch.rand(n, 4, generator=g) < oracle).float()
    labels[:, 2] = logits[:, 2] + torch.randn(n, generator=g)  # a real-valued target
    domain = torch.randint(0, 3, (n,), generator=g)
    return logits, labels, oracle, domain


def _metrics(logits, labels, oracle, domain):
    masks = TaskLoss(TASKS).masks(labels, domain)
    return task_metrics(logits, labels, masks, TASKS, oracle, domain, DOMAINS)


def _sklearn(logits, labels, oracle, domain) -> dict[str, float]:
    from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

    z, y, o, d = logits.double().numpy(), labels.double().numpy(), oracle.double().numpy(), domain.numpy()
    p = 1 / (1 + np.exp(-z))
    out: dict[str, float] = {}
    for t, task in enumerate(TASKS):
        rows = np.ones(len(y), dtype=bool)
        if task.given >= 0:
            rows &= y[:, task.given] == 1
        if task.domains:
            rows &= np.isin(d, task.domains)
        groups = {f"/{task.name}": rows}
        for k, name in enumerate(DOMAINS):
            if not task.domains or k in task.domains:
                groups[f"/{task.name}/{name}"] = rows & (d == k)
        for suffix, r in groups.items():
            if task.loss == "regression":
                out[f"mse{suffix}"] = mean_squared_error(y[r, t], z[r, t])
                out[f"mae{suffix}"] = mean_absolute_error(y[r, t], z[r, t])
                continue
            out[f"auc{suffix}"] = roc_auc_score(y[r, t], z[r, t])
            out[f"logloss{suffix}"] = log_loss(y[r, t], p[r, t], labels=[0, 1])
            out[f"oracle_auc{suffix}"] = roc_auc_score(y[r, t], o[r, t])
            out[f"calibration{suffix}"] = p[r, t].mean() / y[r, t].mean()
            rate = y[r, t].mean()
            out[f"ne{suffix}"] = out[f"logloss{suffix}"] / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    return out


def test_every_task_and_domain_equals_scikit_learn():
    data = _data()
    got, expected = _metrics(*data), _sklearn(*data)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert "auc/search_click/feed" not in got  # the task does not apply there
    assert got["num_examples/purchase"] == float((data[1][:, 0] == 1).sum())


def test_headline_metrics_are_task_weighted_means():
    got = _metrics(*_data())
    bce = [("click", 2.0), ("purchase", 1.0), ("search_click", 1.0)]
    for key in ("auc", "logloss", "ne", "oracle_auc"):
        expected = sum(got[f"{key}/{name}"] * w for name, w in bce) / 4.0
        assert got[key] == pytest.approx(expected, rel=1e-12), key
    assert got["mse"] == got["mse/watch"]


def test_a_task_without_positives_is_left_out_of_the_headline():
    logits, labels, oracle, domain = _data()
    labels[:, 3] = 0  # no positive anywhere: its AUC is undefined
    got = _metrics(logits, labels, oracle, domain)
    assert math.isnan(got["auc/search_click"])
    expected = (2 * got["auc/click"] + got["auc/purchase"]) / 3
    assert got["auc"] == pytest.approx(expected, rel=1e-12)


def _on_rank(rank: int, world: int) -> dict[str, float]:
    logits, labels, oracle, domain = _data()
    sizes = {2: [2100, 900], 3: [1500, 1500, 0]}[world]  # uneven; one rank empty
    lo = sum(sizes[:rank])
    part = slice(lo, lo + sizes[rank])
    return _metrics(logits[part], labels[part], oracle[part], domain[part])


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_agree_with_one_process(world):
    expected = _metrics(*_data())
    for got in run_distributed(_on_rank, world):
        assert set(got) == set(expected)
        for key, value in expected.items():
            if key.startswith(("auc", "oracle_auc", "num_examples")) and "/" in key:
                assert got[key] == value, key  # exact: integer counts
            else:
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
