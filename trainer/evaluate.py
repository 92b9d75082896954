"""One evaluation pass over a rank-sharded validation stream, with metrics over all ranks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from recscale.modules.model import RecModel
from recscale.trainer.eval_metrics import ctr_metrics, gather_all


@torch.no_grad()
def evaluate(model: RecModel, batches: Iterable[Any], device: torch.device, max_batches: int = 0) -> dict[str, float]:
    """AUC / logloss / NE (and the oracle's, when known) over every rank's examples.

    Padding examples (weight 0) are dropped before the metrics. ``max_batches`` must be the same
    on every rank (every rank must run the same number of forward passes: the tables'
    all-to-alls are collective).

    Returns:
        The metrics of ``ctr_metrics`` plus the mean of each scalar diagnostic the model reports.
    """
    was_training = model.training
    model.eval()
    logits_parts, label_parts, oracle_parts = [], [], []
    diag_sums: dict[str, float] = {}
    diag_counts: dict[str, int] = {}
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            batch = batch.to(device)
            _, (_, logits, labels, weights, diagnostics) = model(batch)
            keep = weights > 0
            logits_parts.append(logits[keep].cpu())
            label_parts.append(labels[keep].cpu())
            if batch.oracle is not None:
                oracle_parts.append(batch.oracle[keep].cpu().float())
            for key, value in diagnostics.items():
                if value.numel() == 1:
                    diag_sums[key] = diag_sums.get(key, 0.0) + float(value)
                    diag_counts[key] = diag_counts.get(key, 0) + 1
    finally:
        model.train(was_training)
    logits = gather_all(torch.cat(logits_parts) if logits_parts else torch.zeros(0, 1))
    labels = gather_all(torch.cat(label_parts) if label_parts else torch.zeros(0, 1))
    oracle = gather_all(torch.cat(oracle_parts)) if oracle_parts else None
    out = ctr_metrics(logits, labels, oracle)
    for key, total in diag_sums.items():
        out[key] = total / diag_counts[key]
    return out
