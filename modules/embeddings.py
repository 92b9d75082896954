"""Embedding-table specs -> TorchRec ``EmbeddingBagCollection`` (built on ``meta``; sharded later).

The sparse arch owns only embedding tables, so TorchRec's ``DistributedModelParallel`` can shard
it without wrapping anything dense (DESIGN.md §3). Its output is the pooled embeddings of every
sparse feature, concatenated in a fixed feature order: ``[B, sum_f dim_f]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig


@dataclass(frozen=True)
class PooledLayout:
    """Order and widths of the pooled sparse features the sparse arch emits."""

    feature_names: tuple[str, ...]
    feature_dims: tuple[int, ...]

    @property
    def total_dim(self) -> int:
        """Width of the concatenated pooled output."""
        return sum(self.feature_dims)

    @property
    def num_features(self) -> int:
        """Number of pooled features F."""
        return len(self.feature_names)

    def uniform_dim(self) -> int | None:
        """The common embedding dim when every feature has the same one, else None."""
        dims = set(self.feature_dims)
        return dims.pop() if len(dims) == 1 else None


def table_configs(emb: EmbeddingsConfig, features: FeatureSchemaConfig) -> list[EmbeddingBagConfig]:
    """TorchRec table configs for the tables read by pooled (sparse) features, in config order."""
    readers: dict[str, list[str]] = {}
    for f in features.sparse:
        readers.setdefault(f.table, []).append(f.name)
    out = []
    for t in emb.tables:
        if t.name not in readers:
            continue  # read only by sequence features
        out.append(
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=t.dim or emb.dim,
                num_embeddings=t.num_embeddings,
                feature_names=readers[t.name],
                pooling=PoolingType.SUM if t.pooling == "sum" else PoolingType.MEAN,
            )
        )
    return out


def pooled_layout(tables: list[EmbeddingBagConfig]) -> PooledLayout:
    """The feature order of ``EmbeddingBagCollection(tables)``'s concatenated output."""
    names: list[str] = []
    dims: list[int] = []
    for t in tables:
        for name in t.feature_names:
            names.append(name)
            dims.append(t.embedding_dim)
    return PooledLayout(tuple(names), tuple(dims))


class SparseArch(nn.Module):
    """Embedding tables: KJT of sparse ids -> pooled embeddings ``[B, sum_f dim_f]``.

    Example::

        arch = SparseArch(tables, device=torch.device("cpu"))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"], values=torch.tensor([3, 7, 7, 1]), lengths=torch.tensor([1, 1, 2, 0]))
        arch(kjt).shape   # [2, dim_user + dim_item]; an empty bag pools to zeros
    """

    def __init__(self, tables: list[EmbeddingBagConfig], device: torch.device | None = None) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=tables, device=device or torch.device("meta"))
        self.layout = pooled_layout(tables)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Pooled embeddings of every feature, concatenated: ``[B, sum_f dim_f]``."""
        return self.ebc(features).values()
