"""The serving graph's outputs per task: probabilities, raw regression values, a Zipper task's longest head."""

from __future__ import annotations

import torch
from torch import nn

from recscale.serving.graph import FeatureLookup, InferenceModel
from recscale.serving.tables import InferenceTable


class FixedLogits(nn.Module):
    """A dense arch whose logits are a fixed function of the dense features: ``[B, 4]``."""

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return torch.cat([dense, 2 * dense[:, :1]], dim=1), torch.zeros(()), {}


def _model(regression, heads) -> InferenceModel:
    table = InferenceTable(torch.zeros(5, 2), "none", "sum")
    return InferenceModel({"t": table}, [FeatureLookup("f", "t")], ["f"], FixedLogits(), regression, heads)


def test_each_task_gets_its_serving_head_and_its_output_kind():
    dense = torch.tensor([[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]])
    ids, offsets = torch.tensor([1, 2]), torch.tensor([0, 1])
    logits = torch.cat([dense, 2 * dense[:, :1]], dim=1)
    # click (one head: column 0), purchase (Zipper, heads 1..3: serves column 3)
    out = _model([False, False], [0, 3])(dense, ids, offsets)
    assert torch.equal(out, torch.sigmoid(logits[:, [0, 3]]))
    # a regression task's value comes out raw
    out = _model([False, True], [0, 3])(dense, ids, offsets)
    assert torch.equal(out[:, 0], torch.sigmoid(logits[:, 0])) and torch.equal(out[:, 1], logits[:, 3])
    # no heads given: every column, all probabilities (a model trained before tasks existed)
    assert torch.equal(_model(None, None)(dense, ids, offsets), torch.sigmoid(logits))
