"""The tables' part of a checkpoint: weights and their optimizers' state, resharded by DCP on load.

Entries (``sparse.`` + ...): ``model.<fqn>`` every table (a row-, column- or table-wise shard is a box
of the whole table; a data-parallel table is one replicated tensor), ``optim.<param>.<key>`` the fused
(in-backward) optimizers' state, ``table_optim.<param>.<key>`` the data-parallel tables' optimizer.
Only tensors are saved: the optimizers' hyperparameters come from the config.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from recscale.sharding.checkpoint.chunks import Chunks, as_checkpoint_value
from recscale.sharding.checkpoint.protocol import Saved
from recscale.sharding.checkpoint.tree import flat_keys, flatten

log = logging.getLogger("recscale")


def materialise_state(optimizer: Any) -> None:
    """Create a lazy optimizer's state (loading needs tensors to copy into) without moving weights.

    ``KeyedOptimizer.init_state`` takes a step with zero gradients; with weight decay that step would
    change the weights, so the learning rate is 0 while it runs. Does nothing once state exists.
    """
    if optimizer.state_dict().get("state"):
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.init_state()
    for group, lr in zip(optimizer.param_groups, saved):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def _checkpoint_values(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _checkpoint_values(v) if isinstance(v, dict) else as_checkpoint_value(v) for k, v in tree.items()}


class SparseState:
    """The sharded tables and their optimizers (``Checkpointable``).

    Args:
        sparse: TorchRec's ``DistributedModelParallel`` over the tables (with ``fused_optimizer``).
        table_optimizer: the data-parallel tables' optimizer, if any.
        weights_only: load only the tables' weights; their optimizers keep their fresh state (fine-tuning).
    """

    per_rank: ClassVar[bool] = False

    def __init__(self, sparse: Any, table_optimizer: Any | None, weights_only: bool = False) -> None:
        self.sparse = sparse
        self.table_optimizer = table_optimizer
        self.weights_only = weights_only
        self._live: dict[str, Any] = {}
        self._reset: list[str] = []

    def _live_state(self) -> dict[str, Any]:
        """TorchRec's own state dicts (their tensors are the tables' and optimizers' storage, or copies of it)."""
        live: dict[str, Any] = {"model": self.sparse.state_dict(), "optim": self.sparse.fused_optimizer.state_dict()}
        if self.table_optimizer is not None:
            materialise_state(self.table_optimizer)
            live["table_optim"] = self.table_optimizer.state_dict()
        return live

    def state_dict(self) -> dict[str, Any]:
        """The tables and the optimizers' tensors (empty optimizer states are left out)."""
        live = self._live_state()
        tree: dict[str, Any] = {"model": _checkpoint_values(dict(live["model"]))}
        for sub in ("optim", "table_optim"):
            if sub in live and live[sub].get("state"):
                tree[sub] = _checkpoint_values(dict(live[sub]["state"]))
        return tree

    def load_targets(self, saved: Saved) -> dict[str, Any]:
        """The tables (a missing one is an error) and the optimizer state the checkpoint has for them.

        Optimizer state is stored differently for data-parallel and model-parallel tables (TorchRec
        issue #2394), and row-wise Adagrad keeps one momentum per row of each column shard: a table whose
        kind or number of column shards changed between the saving and the loading plan keeps its
        weights but starts with fresh optimizer state, and a warning names it.
        """
        self._live = self._live_state()
        model = _checkpoint_values(dict(self._live["model"]))
        missing = [k for k in flat_keys(model, "model") if saved.entry(k) is None]
        if missing:
            raise ValueError(f"{saved.path}: the checkpoint lacks table weights: {', '.join(missing[:5])}")
        _check_table_shapes(saved, model)
        targets: dict[str, Any] = {"model": model}
        self._reset = []
        for sub in () if self.weights_only else ("optim", "table_optim"):
            if sub not in self._live:
                continue
            kept = {}
            for param, entries in self._live[sub].get("state", {}).items():
                values = _checkpoint_values(dict(entries))
                if _same_layout(saved, values, f"{sub}.{param}"):
                    kept[param] = values  # their tensors are the optimizer's own: DCP copies into them
                else:
                    self._reset.append(param)
            if kept:
                targets[sub] = kept
        return targets

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hand the filled state dicts back to TorchRec and the table optimizer."""
        self.sparse.load_state_dict(self._live["model"])
        if self.weights_only:
            self._live = {}
            return
        self.sparse.fused_optimizer.load_state_dict(self._live["optim"])
        if "table_optim" in self._live and self.table_optimizer is not None:
            self.table_optimizer.load_state_dict(self._live["table_optim"])
        if self._reset:
            log.warning(
                "optimizer state of %s starts fresh: these tables changed between data-parallel and "
                "model-parallel sharding, or their number of column shards changed, since the checkpoint "
                "(their weights were loaded)",
                ", ".join(sorted(self._reset)),
            )
        self._live, self._reset = {}, []


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.size) if isinstance(value, Chunks) else tuple(value.shape)


def _same_layout(saved: Saved, values: dict[str, Any], prefix: str) -> bool:
    """Every optimizer tensor of a table is in the checkpoint, as a tensor of the shape it has here."""
    for key, value in flatten(values, prefix).items():
        entry = saved.entry(key)
        if not isinstance(entry, TensorStorageMetadata):
            return False
        if hasattr(value, "shape") or isinstance(value, Chunks):
            if tuple(entry.size) != _shape(value):
                return False
    return True


def _check_table_shapes(saved: Saved, model: dict[str, Any]) -> None:
    """Every table has the shape the checkpoint has for it; else one line naming the first that differs."""
    for key, value in flatten(model, "model").items():
        entry = saved.entry(key)
        shape = _shape(value)
        if entry is not None and tuple(entry.size) != shape:
            table = key.removeprefix("model.").removesuffix(".weight").rsplit(".", 1)[-1]
            raise ValueError(
                f"{saved.path}: table {table}: the checkpoint has {list(entry.size)} (rows, dim), this model "
                f"{list(shape)} (embeddings.tables num_embeddings / dim changed?)"
            )


__all__ = ["SparseState", "materialise_state"]
