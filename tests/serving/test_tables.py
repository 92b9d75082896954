"""Inference tables against ``nn.EmbeddingBag``; row-wise quantization error bounds; the runtime's id mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recscale.data.hashing import map_ids as training_map_ids
from recscale.serving.graph import FeatureLookup, InferenceModel, export_graph
from recscale.serving.runtime import map_ids
from recscale.serving.tables import InferenceTable, quantize_rows


def _bags(rows: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (batch,), generator=g)  # some bags empty
    ids = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    return ids, torch.cumsum(lengths, 0) - lengths


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_fp32_table_equals_embedding_bag(mode):
    weight = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    ids, offsets = _bags(50, 16, 1)
    reference = torch.nn.EmbeddingBag.from_pretrained(weight, mode=mode)(ids, offsets)
    assert torch.equal(InferenceTable(weight, "none", mode)(ids, offsets), reference)


@pytest.mark.parametrize(("kind", "levels"), [("int8", 255), ("int4", 15)])
def test_row_wise_quantization_error_is_half_a_step(kind, levels):
    weight = torch.randn(40, 6, generator=torch.Generator().manual_seed(2)) * torch.arange(1, 41)[:, None]
    table = InferenceTable(weight, kind, "sum")
    ids = torch.arange(40)
    rows = table.rows(ids)
    step = (weight.max(1).values - weight.min(1).values) / levels
    error = (rows - weight).abs().max(1).values
    assert torch.all(error <= step / 2 + 1e-5 * step.clamp(min=1))
    assert torch.allclose(rows.min(1).values, weight.min(1).values, atol=1e-6)  # min and max are exact codes
    assert torch.allclose(rows.max(1).values, weight.max(1).values, rtol=1e-5)
    assert table.weight.dtype == torch.uint8 and table.weight.shape[1] == (6 if kind == "int8" else 3)


def test_quantize_rows_worked_example_and_constant_rows():
    codes, scale, bias = quantize_rows(torch.tensor([[0.0, 1.0, 0.25], [2.0, 2.0, 2.0]]), "int8")
    assert codes.tolist() == [[0, 255, 64], [0, 0, 0]]
    assert scale.tolist() == pytest.approx([1 / 255, 1.0]) and bias.tolist() == [0.0, 2.0]


def test_int4_needs_an_even_dim():
    with pytest.raises(ValueError, match="even embedding dim"):
        quantize_rows(torch.zeros(2, 3), "int4")


def test_fp16_table_pools_the_rounded_rows():
    weight = torch.randn(30, 4, generator=torch.Generator().manual_seed(3))
    ids, offsets = _bags(30, 10, 4)
    reference = torch.nn.EmbeddingBag.from_pretrained(weight.half().float(), mode="mean")(ids, offsets)
    assert torch.allclose(InferenceTable(weight, "fp16", "mean")(ids, offsets), reference, atol=1e-6)


@pytest.mark.parametrize("hashing", ["none", "modulo", "hash"])
def test_runtime_id_mapping_is_the_training_readers(hashing):
    ids = np.random.default_rng(0).integers(-(2**62), 2**62, size=1000)
    if hashing == "none":
        ids = np.abs(ids) % 97
    assert np.array_equal(map_ids(ids, hashing, 97), training_map_ids(ids, hashing, 97))


class _Dense(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2 + 4 + 4, 1)

    def forward(self, dense, pooled):
        return self.linear(torch.cat([dense, pooled], dim=1)), torch.zeros(()), {}


def test_exported_graph_takes_any_batch_and_empty_bags():
    torch.manual_seed(0)
    tables = {
        "a": InferenceTable(torch.randn(9, 4), "int8", "sum"),
        "b": InferenceTable(torch.randn(5, 4), "none", "mean"),
    }
    model = InferenceModel(tables, [FeatureLookup("fa", "a"), FeatureLookup("fb", "b")], ["fb", "fa"], _Dense())
    program = export_graph(model, 2).module()
    for batch in (1, 7):
        dense = torch.randn(batch, 2)
        ids_a, off_a = _bags(9, batch, batch)
        inputs = (dense, ids_a, off_a, torch.zeros(0, dtype=torch.int64), torch.zeros(batch, dtype=torch.int64))
        assert torch.allclose(program(*inputs), model(*inputs), atol=1e-6)
