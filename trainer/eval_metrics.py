"""Ranking and calibration metrics of a CTR model: AUC, logloss, normalized entropy, over every rank.

AUC is exact over all evaluation examples of all ranks, never an average of per-rank AUCs (a
different and biased number), and tie-aware: tied scores get their average rank, so a constant
predictor scores exactly 0.5. It is computed without gathering the predictions anywhere, so memory
per rank stays proportional to that rank's share of the examples (``distributed_auc``):

1. each rank sorts its scores and folds ties into runs ``(score, positives, negatives)``;
2. the ranks agree on ``world - 1`` splitters (quantiles of a sample of every rank's scores) and
   send each run to the rank owning its score range (one all-to-all with the real split sizes;
   equal scores always go to the same rank);
3. each rank merges the runs it received and counts, for every run, the negatives below it: those
   of its own lower runs plus those of the lower-ranged ranks;
4. the Mann-Whitney sum ``U = Σ_runs pos · (negatives below + neg / 2)`` is summed over ranks and
   ``AUC = U / (P · N)``.

All counts and ``2U`` are integers held in float64, exact below 2^53 (about 10^8 examples per
evaluation), so the result equals the single-process formula on the gathered predictions.
Logloss and NE are sums reduced over ranks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from recscale.sharding.process_group import host_group

SPLITTER_SAMPLES = 256
"""Scores each rank contributes to the choice of the splitters (more: better balanced ranks)."""


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Single-process AUC of ``scores [N]`` for binary ``labels [N]`` (NaN if one class is absent).

    The reference the distributed computation is tested against.
    """
    scores = scores.double().flatten()
    labels = labels.double().flatten()
    num_pos = float(labels.sum())
    num_neg = float(labels.numel()) - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    # average rank (1-based) of each group of tied scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = avg_rank[inverse]
    pos_rank_sum = float((ranks * labels[order]).sum())
    return (pos_rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def logloss(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``probs [N]`` (single process)."""
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def _bce_sum(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return -(y * p.log() + (1 - y) * (1 - p).log()).sum()


def _entropy(rate: float) -> float:
    """Entropy of a Bernoulli(rate) label, NaN when it is 0 (all labels equal)."""
    if rate <= 0.0 or rate >= 1.0:
        return math.nan
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def normalized_entropy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Logloss divided by the entropy of the base rate (He et al. 2014); < 1 means better than the prior."""
    return logloss(probs, labels) / _entropy(float(labels.double().mean()))


def _world(group: Any) -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return int(dist.get_world_size(group))


def tie_runs(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores [n]`` and 0/1 ``labels [n]`` folded into runs of equal score, ascending.

    Returns:
        ``(score [m] float64, positives [m] float64, negatives [m] float64)``.
    """
    scores = scores.double().flatten()
    labels = labels.double().flatten()
    order = torch.argsort(scores)
    values, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    positives = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, labels[order])
    return values, positives, counts.double() - positives


def _merge_runs(values: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Runs from several sorted sources merged into one ascending run list (equal scores added up)."""
    order = torch.argsort(values, stable=True)
    merged, inverse = torch.unique_consecutive(values[order], return_inverse=True)
    pos_out = torch.zeros(merged.numel(), dtype=torch.float64).index_add_(0, inverse, pos[order])
    neg_out = torch.zeros(merged.numel(), dtype=torch.float64).index_add_(0, inverse, neg[order])
    return merged, pos_out, neg_out


def _splitters(values: torch.Tensor, world: int, group: Any) -> torch.Tensor:
    """``world - 1`` ascending scores that split every rank's runs into ranges of similar size.

    Each rank contributes ``SPLITTER_SAMPLES`` evenly spaced scores of its runs, each standing for
    its share of them (a rank with more runs weighs more); the splitters are the weighted quantiles.
    """
    k = SPLITTER_SAMPLES
    sample = torch.full((k, 2), math.inf, dtype=torch.float64)  # (score, runs it stands for)
    if values.numel():
        picks = torch.linspace(0, values.numel() - 1, min(k, values.numel())).round().long()
        sample[: picks.numel(), 0] = values[picks]
        sample[: picks.numel(), 1] = values.numel() / picks.numel()
    sample[torch.isinf(sample[:, 0]), 1] = 0.0
    pooled = [torch.empty_like(sample) for _ in range(world)]
    dist.all_gather(pooled, sample, group=group)
    everything = torch.cat(pooled)
    everything = everything[torch.argsort(everything[:, 0], stable=True)]
    weight = torch.cumsum(everything[:, 1], 0)
    if not everything.numel() or weight[-1] <= 0:
        return torch.zeros(world - 1, dtype=torch.float64)
    targets = torch.arange(1, world, dtype=torch.float64) * weight[-1] / world
    picks = torch.searchsorted(weight, targets).clamp(max=everything.shape[0] - 1)
    return everything[picks, 0]


def _exchange(
    runs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], splitters: torch.Tensor, world: int, group: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Send each run to the rank owning its score range; returns the runs this rank received."""
    values, pos, neg = runs
    owner = torch.searchsorted(splitters, values, side="left")  # equal scores: same owner
    send_counts = torch.bincount(owner, minlength=world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    packed = torch.stack([values, pos, neg], dim=1)  # [m, 3], already in owner order (values ascend)
    received = packed.new_empty((sum(recv), 3))
    dist.all_to_all_single(received, packed, recv, send, group=group)
    return received[:, 0].contiguous(), received[:, 1].contiguous(), received[:, 2].contiguous()


def distributed_auc(scores: torch.Tensor, labels: torch.Tensor, group: Any = None) -> float:
    """Exact, tie-aware AUC of every rank's ``scores [n_r]`` / ``labels [n_r]`` (a collective).

    ``group``: the ranks that take part (default ``host_group()``, gloo); NaN when one class is absent
    everywhere.
    """
    runs = tie_runs(scores, labels)
    world = _world(group)
    if world > 1:
        group = group if group is not None else host_group()
        runs = _merge_runs(*_exchange(runs, _splitters(runs[0], world, group), world, group))
    values, pos, neg = runs
    totals = torch.stack([pos.sum(), neg.sum()]).reshape(1, 2)
    if world > 1:
        per_rank = [torch.empty_like(totals) for _ in range(world)]
        dist.all_gather(per_rank, totals, group=group)
        gathered = torch.cat(per_rank)
        negatives_below_me = gathered[: dist.get_rank(group), 1].sum()  # ranks own ascending score ranges
        num_pos, num_neg = (float(x) for x in gathered.sum(dim=0))
    else:
        negatives_below_me = torch.zeros((), dtype=torch.float64)
        num_pos, num_neg = float(totals[0, 0]), float(totals[0, 1])
    below = negatives_below_me + torch.cumsum(neg, 0) - neg  # negatives with a lower score than each run
    twice_u = (pos * (2 * below + neg)).sum().reshape(1)
    if world > 1:
        dist.all_reduce(twice_u, group=group)
    if num_pos == 0 or num_neg == 0:
        return math.nan
    return float(twice_u[0]) / (2 * num_pos * num_neg)


def ctr_metrics(logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor | None = None) -> dict[str, float]:
    """AUC, logloss and NE per task over every rank, plus the oracle's when the true probability is known.

    A collective (through ``host_group()``): every rank passes its own examples, padding removed.

    Args:
        logits: ``[n, T]`` this rank's model logits.
        labels: ``[n, T]`` its 0/1 labels.
        oracle: ``[n, T]`` its true click probabilities (synthetic data), or None.

    Returns:
        ``auc``, ``logloss``, ``ne`` (task 0), and per task ``auc/<t>`` etc. when there are several;
        ``oracle_auc`` / ``oracle_logloss`` / ``auc_gap`` when the oracle is known; ``num_examples``.
    """
    world = _world(None)
    logits, labels = logits.detach().cpu(), labels.detach().cpu()
    oracle = oracle.detach().cpu() if oracle is not None else None
    probs = torch.sigmoid(logits.double())
    num_tasks = labels.shape[1]
    # per task: Σ bce(model), Σ bce(oracle), Σ labels; and the example count
    sums = [torch.tensor([float(labels.shape[0])], dtype=torch.float64)]
    for t in range(num_tasks):
        sums.append(_bce_sum(probs[:, t], labels[:, t]).reshape(1))
        sums.append(labels[:, t].double().sum().reshape(1))
        if oracle is not None:
            sums.append(_bce_sum(oracle[:, t], labels[:, t]).reshape(1))
    totals = torch.cat(sums)
    if world > 1:
        dist.all_reduce(totals, group=host_group())
    n = float(totals[0])
    out: dict[str, float] = {"num_examples": n}
    stride = 3 if oracle is not None else 2
    for t in range(num_tasks):
        suffix = "" if t == 0 else f"/task{t}"
        base = 1 + t * stride
        loss = float(totals[base]) / n if n else math.nan
        out[f"auc{suffix}"] = distributed_auc(logits[:, t], labels[:, t])
        out[f"logloss{suffix}"] = loss
        out[f"ne{suffix}"] = loss / _entropy(float(totals[base + 1]) / n) if n else math.nan
        if oracle is not None:
            out[f"oracle_auc{suffix}"] = distributed_auc(oracle[:, t], labels[:, t])
            out[f"oracle_logloss{suffix}"] = float(totals[base + 2]) / n if n else math.nan
            out[f"auc_gap{suffix}"] = out[f"oracle_auc{suffix}"] - out[f"auc{suffix}"]
    return out
