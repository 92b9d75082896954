"""The embedding tables' optimizer.

Model-parallel tables (table-, column-, row-wise...) use FBGEMM's fused kernels: the optimizer runs
inside backward (``apply_optimizer_in_backward``), never as a separate step. Data-parallel tables
use the dense kernel: DMP re-creates their parameters, which then carry no in-backward optimizer,
so they get an ordinary optimizer of the same kind here (``unfused_table_optimizer``), stepped after
backward like any torch optimizer. Both see gradients averaged over ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recscale.configs.schema import SparseOptimizerConfig
from recscale.modules.embeddings import SparseArch


def optimizer_class(cfg: SparseOptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The torch optimizer class and its arguments for the ``optimizer.sparse`` section."""
    if cfg.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    return torch.optim.SGD, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}


def apply_sparse_optimizer(sparse: SparseArch, cfg: SparseOptimizerConfig) -> None:
    """Mark the tables so the sharder fuses ``cfg``'s optimizer into FBGEMM's backward.

    Must run before ``DistributedModelParallel`` wraps the sparse arch.
    """
    cls, kwargs = optimizer_class(cfg)
    apply_optimizer_in_backward(cls, sparse.parameters(), kwargs)


def unfused_table_optimizer(sharded: nn.Module, cfg: SparseOptimizerConfig) -> KeyedOptimizerWrapper | None:
    """An optimizer for the table parameters that no fused kernel updates (data-parallel tables).

    Returns None when every table is fused.
    """
    params = dict(in_backward_optimizer_filter(sharded.named_parameters()))
    if not params:
        return None
    cls, kwargs = optimizer_class(cfg)
    return KeyedOptimizerWrapper(params, lambda ps: cls(ps, **kwargs))
