"""Embedding-table specs -> TorchRec ``EmbeddingBagCollection`` (built on ``meta``; sharded later).

The sparse arch owns only embedding tables, so TorchRec's ``DistributedModelParallel`` can shard
it without wrapping anything dense. Its output is the pooled embeddings of every
sparse feature, concatenated in a fixed feature order: ``[B, sum_f dim_f]``.

Sequence models also get an unpooled ``EmbeddingCollection`` (``SparseArch.ec``) over the tables
that event sequences read, and padded per-event tensors (``modules/sequence_inputs.py``). TorchRec
cannot share one table between an EBC and an EC, so a table read by both a sparse feature and a
sequence becomes two tables with independent weights: the EBC keeps the config name, the EC copy
is named ``<table>__seq`` (``sequence_table_name``). See docs/models/kunlun.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig
from recscale.modules.layout import PooledLayout
from recscale.modules.sequence_inputs import SequenceLayout, SequencePadder

TABLE_DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}
"""``embeddings.tables[].data_type`` -> TorchRec's storage type of the rows."""

VALUE_BYTES = {"fp32": 4, "fp16": 2}
"""Bytes of one stored value."""


def row_bytes(dim: int, data_type: str) -> int:
    """Bytes one lookup of a ``dim``-wide row of ``data_type`` reads."""
    return dim * VALUE_BYTES[data_type]


SEQUENCE_TABLE_SUFFIX = "__seq"
"""Suffix of the EmbeddingCollection copy of a table that sparse features also read."""


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
                init_fn=normal_init(emb.init_std),
                data_type=TABLE_DATA_TYPES[t.data_type],
            )
        )
    return out


def normal_init(std: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An ``init_fn`` drawing N(0, std²), or None for TorchRec's default uniform init.

    TorchRec applies it to every shard when it materialises a table.
    """
    return partial(nn.init.normal_, mean=0.0, std=std) if std > 0 else None


def pooled_layout(tables: list[EmbeddingBagConfig]) -> PooledLayout:
    """The feature order of ``EmbeddingBagCollection(tables)``'s concatenated output."""
    names: list[str] = []
    dims: list[int] = []
    for t in tables:
        for name in t.feature_names:
            names.append(name)
            dims.append(t.embedding_dim)
    return PooledLayout(tuple(names), tuple(dims))


def sequence_table_name(table: str, features: FeatureSchemaConfig) -> str:
    """Name of ``table`` in the sequence ``EmbeddingCollection``.

    Its own name, or ``<table>__seq`` when a sparse feature also reads it (the EBC keeps the original).
    """
    shared = any(f.table == table for f in features.sparse)
    return table + SEQUENCE_TABLE_SUFFIX if shared else table


def sequence_table_configs(
    emb: EmbeddingsConfig, features: FeatureSchemaConfig
) -> tuple[list[EmbeddingConfig], SequenceLayout]:
    """TorchRec table configs for the tables read by event sequences, and the sequences' layout.

    Raises:
        ValueError: when the sequence tables do not share one dim (an ``EmbeddingCollection`` needs one).
    """
    readers: dict[str, list[str]] = {}
    for q in features.sequences:
        readers.setdefault(q.table, []).append(q.name)
    out = []
    for t in emb.tables:
        if t.name in readers:
            out.append(
                EmbeddingConfig(
                    name=sequence_table_name(t.name, features),
                    embedding_dim=t.dim or emb.dim,
                    num_embeddings=t.num_embeddings,
                    feature_names=readers[t.name],
                    init_fn=normal_init(emb.init_std),
                    data_type=TABLE_DATA_TYPES[t.data_type],
                )
            )
    dims = sorted({t.embedding_dim for t in out})
    if len(dims) > 1:
        raise ValueError(
            f"embeddings.tables: the tables read by data.features.sequences must share one dim "
            f"(TorchRec EmbeddingCollection), got {dims}"
        )
    layout = SequenceLayout(
        names=tuple(q.name for q in features.sequences),
        max_lengths=tuple(q.max_length for q in features.sequences),
        dim=dims[0] if dims else emb.dim,
        timestamps=tuple(bool(q.timestamps) for q in features.sequences),
    )
    return out, layout


class SparseArch(nn.Module):
    """Embedding tables: KJT of sparse ids -> pooled embeddings ``[B, sum_f dim_f]``.

    Example::

        arch = SparseArch(tables, device=torch.device("cpu"))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"], values=torch.tensor([3, 7, 7, 1]), lengths=torch.tensor([1, 1, 2, 0]))
        arch(kjt).shape   # [2, dim_user + dim_item]; an empty bag pools to zeros

    With event sequences (``sequence_tables`` given) it also owns ``ec``, an unpooled
    ``EmbeddingCollection`` that the planner shards like the EBC, and ``forward(features, sequences,
    timestamps)`` additionally returns padded per-event tensors (see ``forward``).

    Managed-collision tables (``managed_tables``) live in a second collection, ``mc_ebc``, read with the
    slots ``ManagedIds`` computed (``forward(..., managed=...)``): the other tables' collection still gets
    the batch's KJT itself, so TorchRec's train pipeline keeps starting their input all-to-all a batch
    early (it cannot for ``mc_ebc``, whose input the model computes). ``ebc`` is None when every pooled
    table is managed.

    Args:
        tables: pooled tables, in config order.
        device: ``meta`` for sharding (default) or a real device for an unsharded reference.
        sequence_tables: unpooled tables of the event sequences (EC), from ``sequence_table_configs``.
        sequence_layout: the event sequences (required with ``sequence_tables``).
        managed_tables: names of the ``collisions: managed`` tables among ``tables``.
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        device: torch.device | None = None,
        sequence_tables: list[EmbeddingConfig] | None = None,
        sequence_layout: SequenceLayout | None = None,
        managed_tables: Collection[str] = (),
    ) -> None:
        super().__init__()
        where = device or torch.device("meta")
        plain = [t for t in tables if t.name not in managed_tables]
        managed = [t for t in tables if t.name in managed_tables]
        self.ebc = EmbeddingBagCollection(tables=plain, device=where) if plain else None
        self.mc_ebc = EmbeddingBagCollection(tables=managed, device=where) if managed else None
        self.layout = pooled_layout(tables)
        self.sequence_layout = sequence_layout
        self.ec: EmbeddingCollection | None = None
        if sequence_tables:
            assert sequence_layout is not None, "sequence_tables need a sequence_layout"
            self.ec = EmbeddingCollection(tables=sequence_tables, device=device or torch.device("meta"))
            self.padder = SequencePadder(sequence_layout)

    def collections(self) -> list[EmbeddingBagCollection]:
        """The pooled tables' collections: ``ebc`` and ``mc_ebc``, those that exist."""
        return [c for c in (self.ebc, self.mc_ebc) if c is not None]

    def forward(
        self,
        features: KeyedJaggedTensor,
        sequences: KeyedJaggedTensor | None = None,
        timestamps: KeyedJaggedTensor | None = None,
        managed: KeyedJaggedTensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pooled embeddings of every feature, concatenated in ``layout`` order: ``[B, sum_f dim_f]``.

        ``managed`` holds the managed tables' features as slots (``ManagedIds``); without it they are read
        from ``features`` (which must then hold slots).

        A sharded EBC returns its features grouped by sharding and rank, not in config order, so
        the output is regrouped explicitly (one gather; the identity when already in order).

        With ``sequences`` (``Batch.sequences``, passed straight through so TorchRec's pipeline can
        start the EC's input all-to-all early) it returns ``(pooled, sequences [B, L, D], masks
        [B, L], timestamps [B, L])``, the last three as dicts by event type, right-aligned (newest
        event at position L - 1, the ``max_length`` newest kept); ``timestamps`` is
        ``Batch.sequence_timestamps`` or None.
        """
        pooled_parts = [self.ebc(features)] if self.ebc is not None else []
        if self.mc_ebc is not None:
            pooled_parts.append(self.mc_ebc(managed if managed is not None else features))
        pooled = KeyedTensor.regroup(pooled_parts, [list(self.layout.feature_names)])[0]
        if sequences is None:
            return pooled
        padded = self.padder(self.ec(sequences), timestamps)  # a leaf when sharded: index, do not unpack
        return pooled, padded[0], padded[1], padded[2]
