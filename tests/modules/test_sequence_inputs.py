"""Jagged sequences -> right-aligned padded tensors; the sparse arch's EmbeddingCollection side."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.fx
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recscale.configs.schema import (
    EmbeddingsConfig,
    FeatureSchemaConfig,
    SequenceFeatureConfig,
    SparseFeatureConfig,
    TableConfig,
)
from recscale.modules.embeddings import SparseArch, sequence_table_configs, table_configs
from recscale.modules.sequence_inputs import SequenceLayout, SequencePadder, jagged_to_padded_newest

TAOBAO = Path(__file__).resolve().parents[3] / "shared" / "data" / "samples" / "taobao_clickseq_100.csv"


def _reference(values: torch.Tensor, lengths: list[int], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros(len(lengths), max_length, *values.shape[1:])
    mask = torch.zeros(len(lengths), max_length, dtype=torch.bool)
    start = 0
    for b, n in enumerate(lengths):
        kept = values[start : start + n][-max_length:] if n else values[:0]
        if len(kept):
            out[b, max_length - len(kept) :] = kept
            mask[b, max_length - len(kept) :] = True
        start += n
    return out, mask


@pytest.mark.parametrize("lengths", [[2, 0, 4, 3], [0, 0], [5]])
def test_padding_keeps_the_newest_events_right_aligned(lengths: list[int]) -> None:
    values = torch.randn(sum(lengths), 3, requires_grad=True)
    padded, mask = jagged_to_padded_newest(values, torch.tensor(lengths), 3)
    expect, expect_mask = _reference(values.detach(), lengths, 3)
    torch.testing.assert_close(padded, expect)
    assert torch.equal(mask, expect_mask)
    padded.sum().backward()  # gradients reach exactly the kept events
    kept = expect_mask.sum().item()
    assert values.grad is not None and values.grad.abs().sum().item() == pytest.approx(3 * kept)


def test_padder_pads_ids_and_timestamps_and_traces() -> None:
    layout = SequenceLayout(names=("a", "b"), max_lengths=(2, 3), dim=2, timestamps=(True, False))
    padder = SequencePadder(layout)
    emb = {
        "a": JaggedTensor(values=torch.arange(10.0).view(5, 2), lengths=torch.tensor([3, 2])),
        "b": JaggedTensor(values=torch.ones(1, 2), lengths=torch.tensor([0, 1])),
    }
    ts = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 5, 9]), lengths=torch.tensor([3, 2, 0, 1])
    )
    seqs, masks, times = padder(emb, ts)
    torch.testing.assert_close(seqs["a"][0], torch.tensor([[2.0, 3.0], [4.0, 5.0]]))  # oldest dropped
    assert times["a"].tolist() == [[2, 3], [4, 5]]
    assert times["b"].tolist() == [[0, 0, 0], [0, 0, 0]]  # no timestamp column
    assert masks["b"].tolist() == [[False, False, False], [False, False, True]]
    traced = torch.fx.symbolic_trace(padder)
    assert torch.equal(traced(emb, ts)[0]["a"], seqs["a"])


def _features(shared: bool) -> tuple[EmbeddingsConfig, FeatureSchemaConfig]:
    emb = EmbeddingsConfig(
        dim=4, tables=[TableConfig(name="t_item", num_embeddings=30), TableConfig(name="t_x", num_embeddings=5)]
    )
    features = FeatureSchemaConfig(
        sparse=[SparseFeatureConfig(name="item", table="t_item")],
        sequences=[
            SequenceFeatureConfig(
                name="click", ids="hist", table="t_item" if shared else "t_x", max_length=4, timestamps="ts"
            )
        ],
    )
    return emb, features


def test_a_table_shared_with_a_sparse_feature_gets_its_own_sequence_copy() -> None:
    emb, features = _features(shared=True)
    seq_tables, layout = sequence_table_configs(emb, features)
    assert [t.name for t in seq_tables] == ["t_item__seq"]
    assert layout.names == ("click",) and layout.max_lengths == (4,) and layout.timestamps == (True,)
    emb2, features2 = _features(shared=False)
    assert [t.name for t in sequence_table_configs(emb2, features2)[0]] == ["t_x"]
    emb.tables[0].dim = 8
    with pytest.raises(ValueError, match="embeddings.tables"):
        emb.tables.append(TableConfig(name="t_y", num_embeddings=3, dim=2))
        features.sequences.append(SequenceFeatureConfig(name="buy", ids="h2", table="t_y"))
        sequence_table_configs(emb, features)


def test_sparse_arch_returns_pooled_and_padded_sequences() -> None:
    emb, features = _features(shared=True)
    seq_tables, layout = sequence_table_configs(emb, features)
    arch = SparseArch(table_configs(emb, features), torch.device("cpu"), seq_tables, layout)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1])
    )
    seqs = KeyedJaggedTensor.from_lengths_sync(keys=["click"], values=torch.arange(7), lengths=torch.tensor([6, 1]))
    pooled = arch(sparse)
    assert pooled.shape == (2, 4)
    pooled2, s, m, t = arch(sparse, seqs, None)
    torch.testing.assert_close(pooled, pooled2)
    table = arch.ec.embeddings["t_item__seq"].weight
    torch.testing.assert_close(s["click"][0], table[2:6])
    assert m["click"].tolist() == [[True] * 4, [False, False, False, True]]
    assert t["click"].shape == (2, 4) and t["click"].abs().sum() == 0


@pytest.mark.skipif(not TAOBAO.exists(), reason="../shared/data/samples/taobao_clickseq_100.csv is not on this machine")
def test_taobao_click_sequences_pad_to_the_newest_events() -> None:
    with TAOBAO.open() as f:
        rows = list(csv.DictReader(f))
    histories = [[int(x) % 1000 for x in r["click_sequence"].split("^") if x] for r in rows]
    lengths = torch.tensor([len(h) for h in histories])
    values = torch.tensor([x for h in histories for x in h])
    emb = EmbeddingsConfig(
        dim=4, tables=[TableConfig(name="t_ad", num_embeddings=1000), TableConfig(name="t_user", num_embeddings=10)]
    )
    features = FeatureSchemaConfig(
        sparse=[SparseFeatureConfig(name="user", table="t_user")],
        sequences=[SequenceFeatureConfig(name="click", ids="click_sequence", table="t_ad", max_length=5)],
    )
    seq_tables, layout = sequence_table_configs(emb, features)
    arch = SparseArch(table_configs(emb, features), torch.device("cpu"), seq_tables, layout)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user"], values=torch.zeros(len(rows), dtype=torch.long), lengths=torch.ones(len(rows), dtype=torch.long)
    )
    seqs = KeyedJaggedTensor.from_lengths_sync(keys=["click"], values=values, lengths=lengths)
    _, s, m, _ = arch(sparse, seqs)
    assert m["click"].sum(1).tolist() == lengths.clamp(max=5).tolist()
    table = arch.ec.embeddings["t_ad"].weight
    for b, h in enumerate(histories):
        if h:
            torch.testing.assert_close(s["click"][b, -1], table[h[-1]])  # newest event in the last slot
        assert s["click"][b, ~m["click"][b]].abs().sum() == 0
