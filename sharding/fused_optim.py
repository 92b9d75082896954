"""The embedding tables' optimizer, fused into TorchRec's backward (updated during backward)."""

from __future__ import annotations

from typing import Any

import torch
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recscale.configs.schema import SparseOptimizerConfig
from recscale.modules.embeddings import SparseArch


def apply_sparse_optimizer(sparse: SparseArch, cfg: SparseOptimizerConfig) -> None:
    """Mark the tables so the sharder fuses ``cfg``'s optimizer into FBGEMM's backward.

    Must run before ``DistributedModelParallel`` wraps the sparse arch.
    """
    kwargs: dict[str, Any] = {"lr": cfg.lr}
    cls: type[torch.optim.Optimizer]
    if cfg.name == "rowwise_adagrad":
        cls, kwargs = RowWiseAdagrad, {**kwargs, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    elif cfg.name == "adagrad":
        cls, kwargs = torch.optim.Adagrad, {**kwargs, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    elif cfg.name == "adam":
        cls, kwargs = torch.optim.Adam, {**kwargs, "weight_decay": cfg.weight_decay}
    else:
        cls, kwargs = torch.optim.SGD, {**kwargs, "weight_decay": cfg.weight_decay}
    apply_optimizer_in_backward(cls, sparse.parameters(), kwargs)
