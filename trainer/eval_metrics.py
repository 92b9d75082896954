"""Ranking and calibration metrics of a CTR model: AUC, logloss, normalized entropy.

AUC is computed exactly on all evaluation examples of all ranks (predictions are gathered),
never as an average of per-rank AUCs, which is a different and biased number. Ties in the score
get the average rank, so a constant predictor scores exactly 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from recscale.sharding.process_group import host_group


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores [N]`` for binary ``labels [N]`` (NaN if one class is absent)."""
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
    """Mean binary cross-entropy of probabilities ``probs [N]``."""
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def normalized_entropy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Logloss divided by the entropy of the base rate (He et al. 2014); < 1 means better than the prior."""
    rate = float(labels.double().mean())
    if rate <= 0.0 or rate >= 1.0:
        return math.nan
    base = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    return logloss(probs, labels) / base


def gather_all(values: torch.Tensor) -> torch.Tensor:
    """Concatenate ``values [n_r, ...]`` of every rank on every rank (sizes may differ per rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    world = dist.get_world_size()
    n = torch.tensor([values.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=host_group())
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype)
    padded[: values.shape[0]] = values.cpu()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=host_group())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def ctr_metrics(logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor | None = None) -> dict[str, float]:
    """AUC, logloss and NE per task, plus the oracle's AUC and logloss when the true probability is known.

    Args:
        logits: ``[N, T]`` model logits (already gathered from all ranks, padding removed).
        labels: ``[N, T]`` 0/1 labels.
        oracle: ``[N, T]`` true click probabilities (synthetic data), or None.

    Returns:
        ``auc``, ``logloss``, ``ne`` (task 0), and per task ``auc/<t>`` etc. when there are several;
        ``oracle_auc`` / ``oracle_logloss`` / ``auc_gap`` when the oracle is known; ``num_examples``.
    """
    out: dict[str, float] = {"num_examples": float(labels.shape[0])}
    probs = torch.sigmoid(logits.double())
    for t in range(labels.shape[1]):
        suffix = "" if t == 0 else f"/task{t}"
        out[f"auc{suffix}"] = auc(logits[:, t], labels[:, t])
        out[f"logloss{suffix}"] = logloss(probs[:, t], labels[:, t])
        out[f"ne{suffix}"] = normalized_entropy(probs[:, t], labels[:, t])
        if oracle is not None:
            out[f"oracle_auc{suffix}"] = auc(oracle[:, t], labels[:, t])
            out[f"oracle_logloss{suffix}"] = logloss(oracle[:, t], labels[:, t])
            out[f"auc_gap{suffix}"] = out[f"oracle_auc{suffix}"] - out[f"auc{suffix}"]
    return out
