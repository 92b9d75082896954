"""Trained runs and reference predictions for the serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.distributed import run_distributed
from tests.trainer.runs import new_run, small_job, train_worker


def train_small(root: Path, name: str, *overrides: str, world_size: int = 2, preset: str = "quickstart") -> Path:
    """A 1-epoch small run of ``preset`` on ``world_size`` gloo ranks (tables sharded across them)."""
    cfg = small_job(root / "cache", "trainer.epochs=1", *overrides, preset=preset)
    run_dir = new_run(root, name, cfg)
    run_distributed(train_worker, world_size, cfg, run_dir, False)
    return run_dir


def eval_predictions_worker(rank: int, world: int, checkpoint: Path, data: str) -> dict[str, object]:
    """``run_distributed`` worker: ``recscale eval``'s own forward passes; returns its metrics and probabilities.

    The probabilities are those ``recscale eval`` computes its AUC from (padding dropped, file order).
    """
    from recscale.launch import eval_entrypoint
    from recscale.trainer import evaluate

    seen: dict[str, torch.Tensor] = {}
    original = evaluate.task_metrics

    def capture(logits, labels, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["p"], seen["labels"] = torch.sigmoid(logits.double()), labels
        return original(logits, labels, *args, **kwargs)

    evaluate.task_metrics = capture
    try:
        metrics = eval_entrypoint.evaluate_checkpoint(checkpoint, data, 384)
    finally:
        evaluate.task_metrics = original
    return {"metrics": metrics, "p": seen["p"].numpy(), "labels": seen["labels"].numpy()}


def eval_predictions(checkpoint: Path, data: str = "") -> dict[str, object]:
    """``recscale eval`` of ``checkpoint`` on one rank, with its per-example probabilities."""
    return run_distributed(eval_predictions_worker, 1, checkpoint, data)[0]
