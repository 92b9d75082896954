"""One evaluation pass over a rank-sharded validation stream, with metrics over all ranks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from recscale.modules.model import RecModel
from recscale.modules.tasks import TaskLoss, default_tasks
from recscale.trainer.task_metrics import task_metrics


@torch.no_grad()
def evaluate(
    model: RecModel,
    batches: Iterable[Any],
    device: torch.device,
    max_batches: int = 0,
    domain_names: Sequence[str] = (),
    keep_logits: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Per-task (and per-domain) AUC / logloss / NE or MSE / MAE, and the oracle's when known, over every rank.

    Padding examples (weight 0) are dropped before the metrics. ``max_batches`` must be the same
    on every rank (every rank must run the same number of forward passes: the tables'
    all-to-alls are collective). The predictions stay on the device until the pass ends and are
    then copied to the host once; no rank ever holds another rank's predictions
    (``eval_metrics.distributed_auc``).

    ``keep_logits``, when given, receives this rank's logits ``[n, T]`` (serving heads, padding removed,
    on the host, in the order read): a streaming run's progressive scores.

    Returns:
        The metrics of ``task_metrics`` plus the mean of each scalar diagnostic the model reports.
    """
    was_training = model.training
    model.eval()
    logits_parts, label_parts, weight_parts, oracle_parts, domain_parts = [], [], [], [], []
    diag_sums: dict[str, torch.Tensor] = {}
    diag_counts: dict[str, int] = {}
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            batch = batch.to(device, non_blocking=True)
            _, (_, logits, labels, weights, diagnostics) = model(batch)
            logits_parts.append(logits)
            label_parts.append(labels)
            weight_parts.append(weights)
            if batch.oracle is not None:
                oracle_parts.append(batch.oracle.float())
            if batch.domain is not None:
                domain_parts.append(batch.domain)
            for key, value in diagnostics.items():
                if value.numel() == 1:
                    value = value.detach().reshape(()).double()
                    diag_sums[key] = diag_sums[key] + value if key in diag_sums else value
                    diag_counts[key] = diag_counts.get(key, 0) + 1
    finally:
        model.train(was_training)
    keep = torch.cat(weight_parts).cpu() > 0 if weight_parts else torch.zeros(0, dtype=torch.bool)
    logits = torch.cat(logits_parts).cpu()[keep] if logits_parts else torch.zeros(0, 1)
    labels = torch.cat(label_parts).cpu()[keep] if label_parts else torch.zeros(0, 1)
    oracle = torch.cat(oracle_parts).cpu()[keep] if oracle_parts else None
    domain = torch.cat(domain_parts).cpu()[keep] if domain_parts else None
    if keep_logits is not None:
        keep_logits.append(logits)
    tasks = model.task_loss or TaskLoss(default_tasks(labels.shape[1]))
    logits, labels, masks, scored, oracle = tasks.evaluation_columns(logits, labels, domain, oracle)
    out = task_metrics(logits, labels, masks, scored, oracle, domain, domain_names)
    for key, total in diag_sums.items():
        out[key] = float(total) / diag_counts[key]
    return out
