"""Random batches that match a job config's feature schema (for model and sharding tests)."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs import JobConfig, config_from_dict
from recscale.data.batch import Batch


def random_batch(cfg: JobConfig, batch_size: int, seed: int, max_ids: int = 3) -> Batch:
    """A batch with 0..max_ids ids per sparse feature (empty bags included), dense N(0,1), 0/1 labels."""
    g = torch.Generator().manual_seed(seed)
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    f = cfg.data.features
    lengths = torch.randint(0, max_ids + 1, (len(f.sparse), batch_size), generator=g)
    values = torch.cat(
        [torch.randint(0, rows[s.table], (int(lengths[i].sum()),), generator=g) for i, s in enumerate(f.sparse)]
    )
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=[s.name for s in f.sparse], values=values, lengths=lengths.flatten()
    )
    return Batch(
        dense=torch.randn(batch_size, len(f.dense), generator=g),
        sparse=sparse,
        labels=(torch.rand(batch_size, len(f.labels), generator=g) < 0.3).float(),
        weights=torch.ones(batch_size),
    )


def tiny_config(**sections: dict) -> JobConfig:
    """A small DCN-V2 job (4 tables of different sizes, 3 dense features) with section overrides."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "features": {
                "labels": ["label"],
                "dense": ["d0", "d1", "d2"],
                "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)],
            }
        },
        "embeddings": {
            "dim": 8,
            "tables": [{"name": f"t{i}", "num_embeddings": n} for i, n in enumerate([64, 40, 24, 16])],
        },
        "model": {
            "arch": "dcnv2",
            "dense_arch": [16, 8],
            "over_arch": [16],
            "dcnv2": {"num_cross_layers": 2, "low_rank": 4},
        },
        "optimizer": {"dense": {"name": "sgd", "lr": 0.1}, "sparse": {"name": "sgd", "lr": 0.1}},
        "trainer": {"batch_size": 16, "device": "cpu"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}  # type: ignore[dict-item]
        else:
            raw[key] = value
    return config_from_dict(raw)
