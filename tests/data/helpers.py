"""Small Parquet data sets and configs for the data tests; every row is identifiable by its ``rid``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recscale.configs.schema import (
    EmbeddingsConfig,
    FeatureSchemaConfig,
    ReaderConfig,
    SequenceFeatureConfig,
    SparseFeatureConfig,
    TableConfig,
)
from recscale.data import ParquetBatchReader

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test when it is absent."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not available: {path} is absent")
    return path


def features(with_sequences: bool = False, oracle: str = "") -> FeatureSchemaConfig:
    """``rid`` (dense, the row number), ``d1``, single-hot ``a``, multi-hot ``b`` (+ a ``click`` sequence)."""
    return FeatureSchemaConfig(
        labels=["label"],
        dense=["rid", "d1"],
        sparse=[SparseFeatureConfig(name="a", table="ta"), SparseFeatureConfig(name="b", table="tb", max_ids=2)],
        sequences=(
            [SequenceFeatureConfig(name="click", ids="hist", table="tb", max_length=3, timestamps="hist_ts")]
            if with_sequences
            else []
        ),
        oracle=oracle,
    )


def embeddings(rows_a: int = 100, rows_b: int = 50) -> EmbeddingsConfig:
    return EmbeddingsConfig(
        dim=4, tables=[TableConfig(name="ta", num_embeddings=rows_a), TableConfig(name="tb", num_embeddings=rows_b)]
    )


def table(n: int, first: int = 0, seed: int = 0, with_sequences: bool = False, oracle: bool = False) -> pa.Table:
    """n rows numbered ``first..first+n-1`` in ``rid``; ids within tables of 100 and 50 rows."""
    rng = np.random.default_rng(seed)
    rid = np.arange(first, first + n)
    bags = [list(rng.integers(0, 50, k)) for k in rng.integers(0, 4, n)]
    columns = {
        "label": (rid % 3 == 0).astype(np.int64),
        "rid": rid.astype(np.float32),
        "d1": rng.standard_normal(n).astype(np.float32),
        "a": rid % 100,
        "b": pa.array(bags, type=pa.list_(pa.int64())),
    }
    if with_sequences:
        lengths = rng.integers(0, 6, n)
        columns["hist"] = pa.array(
            [[(r + j) % 50 for j in range(k)] for r, k in zip(rid, lengths)], type=pa.list_(pa.int64())
        )
        columns["hist_ts"] = pa.array([list(range(1000, 1000 + k)) for k in lengths], type=pa.list_(pa.int64()))
    if oracle:
        columns["p"] = pa.array(rng.random(n).astype(np.float32))
    return pa.table(columns)


def write_files(folder: Path, sizes: list[int], row_group_size: int, **kwargs: object) -> Path:
    """Files ``part-i.parquet`` with ``sizes[i]`` rows (numbered on across files); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for i, n in enumerate(sizes):
        pq.write_table(table(n, first, seed=i, **kwargs), folder / f"part-{i}.parquet", row_group_size=row_group_size)  # type: ignore[arg-type]
        first += n
    return folder


def make_reader(
    path: Path,
    *,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    mode: str = "train",
    feats: FeatureSchemaConfig | None = None,
    emb: EmbeddingsConfig | None = None,
    **reader: object,
) -> ParquetBatchReader:
    cfg = ReaderConfig(**{"shuffle_buffer_rows": 300, **reader})  # type: ignore[arg-type]
    return ParquetBatchReader(
        path,
        feats or features(),
        emb or embeddings(),
        cfg,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        mode=mode,
    )  # type: ignore[arg-type]


def rids(batches: list) -> list[np.ndarray]:
    """The row numbers of the real (weight 1) rows of each batch."""
    return [b.dense[:, 0][b.weights > 0].numpy().astype(np.int64) for b in batches]
