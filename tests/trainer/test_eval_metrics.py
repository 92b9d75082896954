"""Evaluation metrics over ranks without gathering the predictions: equal to the single-process formulas.

The reference is the computation the trainer used before (every prediction gathered to every rank,
then ``auc`` / ``logloss`` / ``normalized_entropy`` on the whole set): the distributed AUC must equal
it exactly (ties included), logloss and NE up to float64 summation order, at 2 and 3 ranks, with
uneven shards, a rank without examples, and scores tied across ranks.
"""

from __future__ import annotations

import math

import pytest
import torch

from recscale.modules.tasks import default_tasks
from recscale.trainer.eval_metrics import (
    _exchange,
    _splitters,
    auc,
    distributed_auc,
    logloss,
    normalized_entropy,
    tie_runs,
)
from recscale.trainer.task_metrics import task_metrics
from tests.distributed import run_distributed


def ctr_metrics(logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor) -> dict[str, float]:
    """``task_metrics`` with one unmasked bce task of weight 1 per column."""
    return task_metrics(logits, labels, torch.ones_like(labels), default_tasks(labels.shape[1]), oracle)


def _data(n: int, tasks: int, seed: int, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits rounded to ``levels`` values per unit (many ties), labels correlated with them, an oracle."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.round(torch.randn(n, tasks, generator=g) * levels) / levels
    oracle = torch.sigmoid(logits + 0.3 * torch.randn(n, tasks, generator=g))
    labels = (torch.rand(n, tasks, generator=g) < oracle).float()
    return logits, labels, oracle


def _reference(logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor) -> dict[str, float]:
    """What the trainer computed on the gathered predictions."""
    out = {"num_examples": float(labels.shape[0])}
    probs = torch.sigmoid(logits.double())
    num_tasks = labels.shape[1]
    for t in range(num_tasks):
        suffix = "" if num_tasks == 1 else f"/task{t}"
        out[f"auc{suffix}"] = auc(logits[:, t], labels[:, t])
        out[f"logloss{suffix}"] = logloss(probs[:, t], labels[:, t])
        out[f"ne{suffix}"] = normalized_entropy(probs[:, t], labels[:, t])
        out[f"oracle_auc{suffix}"] = auc(oracle[:, t], labels[:, t])
        out[f"calibration{suffix}"] = float(probs[:, t].mean() / labels[:, t].double().mean())
        out[f"oracle_logloss{suffix}"] = logloss(oracle[:, t], labels[:, t])
        out[f"auc_gap{suffix}"] = out[f"oracle_auc{suffix}"] - out[f"auc{suffix}"]
        if num_tasks > 1:
            out[f"num_examples{suffix}"] = float(labels.shape[0])
    if num_tasks > 1:  # equal weights: the headline is the plain mean over tasks
        for key in ("auc", "logloss", "ne", "calibration", "oracle_auc", "oracle_logloss", "auc_gap"):
            out[key] = sum(out[f"{key}/task{t}"] for t in range(num_tasks)) / num_tasks
    return out


def _shards(world: int) -> list[int]:
    """Uneven shard sizes; the last rank of 3 gets nothing."""
    return {1: [1000], 2: [700, 300], 3: [600, 400, 0]}[world]


def _on_rank(rank: int, world: int) -> dict[str, object]:
    """Every distributed case on one process group (spawning ranks costs more than the cases)."""
    out: dict[str, object] = {}
    for levels in LEVELS:
        logits, labels, oracle = _data(1000, 2, seed=7, levels=levels)
        sizes = _shards(world)
        lo = sum(sizes[:rank])
        part = slice(lo, lo + sizes[rank])
        out[f"metrics/{levels}"] = ctr_metrics(logits[part], labels[part], oracle[part])
    scores = torch.zeros(50 + 25 * rank)
    out["constant"] = distributed_auc(scores, (torch.arange(scores.numel()) % 3 == 0).float())
    out["one_class"] = distributed_auc(torch.randn(10), torch.ones(10))
    if world == 3:
        out["held"] = _received_runs(rank, world)
    return out


def _received_runs(rank: int, world: int) -> int:
    """How many tie runs this rank holds after the exchange (3000 distinct scores, skewed shards)."""
    g = torch.Generator().manual_seed(rank)
    n = [2000, 700, 300][rank]
    scores = torch.randn(n, generator=g) * (1 + rank)  # ranks' score ranges differ
    runs = tie_runs(scores, (torch.rand(n, generator=g) < 0.5).float())
    received = _exchange(runs, _splitters(runs[0], world, None), world, None)
    return int(received[0].numel())


LEVELS = (4, 1000)
"""Score resolutions: heavy ties across ranks, nearly distinct scores."""


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, object]]]:
    return request.param, run_distributed(_on_rank, request.param)


@pytest.mark.parametrize("levels", LEVELS)
def test_distributed_metrics_equal_the_gathered_computation(ranks, levels: int) -> None:
    world, results = ranks
    logits, labels, oracle = _data(1000, 2, seed=7, levels=levels)
    expected = _reference(logits, labels, oracle)
    for result in results:
        got = result[f"metrics/{levels}"]
        assert set(got) == set(expected)
        for key, value in expected.items():
            if key.startswith(("auc/", "oracle_auc/", "num_examples")):
                assert got[key] == value, key  # exact: integer counts in float64
            else:
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_a_constant_predictor_scores_one_half_over_ranks(ranks) -> None:
    assert [r["constant"] for r in ranks[1]] == [0.5] * ranks[0]


def test_auc_is_nan_when_a_class_is_absent_everywhere(ranks) -> None:
    assert all(math.isnan(r["one_class"]) for r in ranks[1])


@pytest.mark.parametrize("ranks", [3], indirect=True)
def test_each_rank_holds_about_its_share_of_the_examples(ranks) -> None:
    """Memory per rank stays bounded: the exchange balances 3000 runs over 3 ranks (none gathers them all)."""
    _, results = ranks
    held = [r["held"] for r in results]
    assert sum(held) == 3000
    assert max(held) <= 1.2 * 1000, held


def test_single_process_metrics_equal_the_reference() -> None:
    logits, labels, oracle = _data(500, 1, seed=3, levels=8)
    got = ctr_metrics(logits, labels, oracle)
    expected = _reference(logits, labels, oracle)
    assert got["auc"] == expected["auc"]
    assert got["logloss"] == pytest.approx(expected["logloss"], rel=1e-12)


@pytest.mark.parametrize("levels", [2, 1000])
def test_the_exact_auc_and_logloss_equal_scikit_learns(levels):
    """An independent reference: scikit-learn's ``roc_auc_score`` (ties count half) and ``log_loss``."""
    from sklearn.metrics import log_loss, roc_auc_score

    logits, labels, _ = _data(5000, 1, seed=3, levels=levels)
    scores, y = logits[:, 0].double(), labels[:, 0].double()
    assert auc(scores, y) == pytest.approx(roc_auc_score(y.numpy(), scores.numpy()), abs=1e-12)
    probs = torch.sigmoid(scores)
    assert logloss(probs, y) == pytest.approx(log_loss(y.numpy(), probs.numpy()), rel=1e-9)
