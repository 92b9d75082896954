"""Small dense models (no tables) and a checkpoint manager over them, for the checkpoint tests."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from recscale.configs.schema import DenseOptimizerConfig
from recscale.sharding.checkpoint import CheckpointManager, TrainerState
from recscale.sharding.dense_ddp import DDPDense


class Manager(CheckpointManager):
    """The run directory policy over a dense backend and the trainer state (no tables)."""

    @staticmethod
    def _parts(parallel: Any, trainer_state: dict[str, Any] | None) -> dict[str, Any]:
        return {"dense": parallel.checkpoint_state(), "trainer": TrainerState(trainer_state)}


def dense_backend() -> DDPDense:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    return DDPDense(model, DenseOptimizerConfig(name="adam", lr=0.01), 20)


def train_step(backend: DDPDense, seed: int) -> float:
    rank = dist.get_rank() if dist.is_initialized() else 0
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed * 10 + rank))
    backend.zero_grad()
    loss = backend.module(x).pow(2).mean()
    backend.backward(loss)
    backend.step()
    return float(loss)


def weights_of(backend: DDPDense) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.inner.state_dict().items()}


class WarningRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
