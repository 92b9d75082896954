"""The inference model: plain-torch table lookups + the trained dense arch -> probabilities.

``InferenceModel.forward(dense [B, N], ids_0 [nnz_0], offsets_0 [B], ids_1, offsets_1, ...)`` returns
one prediction per task ``[B, T]``: ``sigmoid(logit)`` for a ``bce`` task, the raw output for a
``regression`` task. Features come in ``features`` order (the config's ``data.features.sparse``);
the pooled embeddings are concatenated in the order the dense arch was trained on (the sparse arch's
``PooledLayout``: tables in config order, each table's features in order), so the dense arch sees
exactly the ``[B, sum D]`` it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recscale.serving.tables import InferenceTable


@dataclass(frozen=True)
class FeatureLookup:
    """One sparse feature of the graph: its name, its table, and its position in the pooled layout."""

    name: str
    table: str


class InferenceModel(nn.Module):
    """Tables + dense arch, without TorchRec or any process group (exportable with ``torch.export``).

    Args:
        tables: one ``InferenceTable`` per table name.
        features: the sparse features, in input order.
        pooled_order: the feature names in the dense arch's pooled layout order.
        dense: the trained dense arch (``dense(dense [B, N], pooled [B, sum D]) -> (logits [B, T], ...)``).
        regression: per task, whether its output is a real value (returned raw) rather than a logit;
            empty = every task is ``bce``.
        serving_heads: the dense arch's output column of each task (a Zipper task's longest window);
            None = every output column, in order.
    """

    def __init__(
        self,
        tables: dict[str, InferenceTable],
        features: list[FeatureLookup],
        pooled_order: list[str],
        dense: nn.Module,
        regression: list[bool] | None = None,
        serving_heads: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(tables)
        self.features = features
        position = {f.name: i for i, f in enumerate(features)}
        self.order = [position[name] for name in pooled_order]
        self.dense = dense
        self.any_regression = any(regression or [])
        self.heads = serving_heads
        self.register_buffer("regression", torch.tensor(regression or [], dtype=torch.bool), persistent=False)

    def forward(self, dense: torch.Tensor, *bags: torch.Tensor) -> torch.Tensor:
        """``dense [B, N]``, then ``ids [nnz_f], offsets [B]`` per feature -> predictions ``[B, T]``."""
        pooled = [
            self.tables[f.table](bags[2 * i], bags[2 * i + 1])  # [B, D_f]
            for i, f in enumerate(self.features)
        ]
        logits = self.dense(dense, torch.cat([pooled[i] for i in self.order], dim=1))[0].float()
        if self.heads is not None:
            logits = logits[:, self.heads]
        if self.any_regression:
            return torch.where(self.regression, logits, torch.sigmoid(logits))
        return torch.sigmoid(logits)


def example_inputs(num_dense: int, num_features: int, batch: int = 3) -> tuple[torch.Tensor, ...]:
    """Inputs of a ``batch``-row example (the second row's bags empty), for tracing."""
    out: list[torch.Tensor] = [torch.zeros(batch, num_dense)]
    for _ in range(num_features):
        out += [torch.zeros(batch + 1, dtype=torch.int64), torch.tensor([0, 1, 1] + [2] * (batch - 3))[:batch]]
    return tuple(out)


def export_graph(model: InferenceModel, num_dense: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` with the batch size and every bag's id count dynamic."""
    inputs = example_inputs(num_dense, len(model.features))
    batch = torch.export.Dim("batch", min=1)
    shapes: list[dict[int, object]] = [{0: batch}]
    for i in range(len(model.features)):
        shapes += [{0: torch.export.Dim(f"nnz_{i}", min=0)}, {0: batch}]
    model.eval()
    with torch.no_grad():
        return torch.export.export(model, inputs, dynamic_shapes=(shapes[0], tuple(shapes[1:])), strict=False)


__all__ = ["FeatureLookup", "InferenceModel", "example_inputs", "export_graph"]
