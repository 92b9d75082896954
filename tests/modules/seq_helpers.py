"""Small sequence-model configs and random batches with event sequences, for the Kunlun / GCA tests."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs import JobConfig, config_from_dict
from recscale.data.batch import Batch

aten = torch.ops.aten


def seq_config(arch: str = "kunlun", model: dict[str, Any] | None = None, **features: Any) -> JobConfig:
    """Two sparse features (item shares its table with the sequences), 2 dense, two event types."""
    sequences = features.pop(
        "sequences",
        [
            {"name": "click", "ids": "hist_click", "table": "t_item", "max_length": 12, "timestamps": "hist_click_ts"},
            {"name": "buy", "ids": "hist_buy", "table": "t_cat", "max_length": 6},
        ],
    )
    raw = {
        "name": "seq-tiny",
        "data": {
            "features": {
                "labels": ["label"],
                "dense": ["d0", "d1"],
                "sparse": [{"name": "user", "table": "t_user"}, {"name": "item", "table": "t_item"}],
                "sequences": sequences,
                "domain": "domain",
                **features,
            }
        },
        "embeddings": {
            "dim": 8,
            "tables": [
                {"name": "t_user", "num_embeddings": 50},
                {"name": "t_item", "num_embeddings": 40},
                {"name": "t_cat", "num_embeddings": 10},
            ],
        },
        "model": {
            "arch": arch,
            "dense_arch": [8],
            "over_arch": [16],
            **(model or {}),
        },
        "trainer": {"batch_size": 8, "device": "cpu"},
    }
    return config_from_dict(raw)


def seq_batch(cfg: JobConfig, batch_size: int, seed: int, empty_rows: tuple[int, ...] = (1,)) -> Batch:
    """Random batch: 1-2 ids per sparse feature; sequences of 0..1.5*max_length events (some longer than
    max_length, the rows in ``empty_rows`` without any), increasing timestamps; domain in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    f = cfg.data.features
    lengths = torch.randint(1, 3, (len(f.sparse), batch_size), generator=g)
    values = torch.cat(
        [torch.randint(0, rows[s.table], (int(lengths[i].sum()),), generator=g) for i, s in enumerate(f.sparse)]
    )
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=[s.name for s in f.sparse], values=values, lengths=lengths.flatten()
    )
    seq_lengths, seq_values, seq_times = [], [], []
    for q in f.sequences:
        n = torch.randint(0, q.max_length * 3 // 2 + 1, (batch_size,), generator=g)
        for r in empty_rows:
            if r < batch_size:
                n[r] = 0
        seq_lengths.append(n)
        seq_values.append(torch.randint(0, rows[q.table], (int(n.sum()),), generator=g))
        gaps = torch.randint(1, 10_000, (int(n.sum()),), generator=g)
        seq_times.append(1_700_000_000 + torch.cumsum(gaps, 0))
    keys = [q.name for q in f.sequences]
    sequences = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.cat(seq_values), lengths=torch.cat(seq_lengths)
    )
    timestamps = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.cat(seq_times), lengths=torch.cat(seq_lengths)
    )
    return Batch(
        dense=torch.randn(batch_size, len(f.dense), generator=g),
        sparse=sparse,
        labels=(torch.rand(batch_size, len(f.labels), generator=g) < 0.3).float(),
        weights=torch.ones(batch_size),
        sequences=sequences,
        sequence_timestamps=timestamps,
        domain=torch.randint(0, 2, (batch_size,), generator=g),
    )


def padded_inputs(
    batch_size: int, lengths: dict[str, int], dim: int, seed: int = 0, garbage: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Right-aligned padded sequences with random real lengths (row 1 empty), garbage at padding."""
    g = torch.Generator().manual_seed(seed)
    seqs, masks, times = {}, {}, {}
    for name, length in lengths.items():
        n = torch.randint(0, length + 1, (batch_size,), generator=g)
        n[0] = length
        if batch_size > 1:
            n[1] = 0
        slot = torch.arange(length)
        mask = slot.unsqueeze(0) >= (length - n).unsqueeze(1)
        x = torch.randn(batch_size, length, dim, generator=g)
        if not garbage:
            x = x * mask.unsqueeze(-1)
        seqs[name] = x
        masks[name] = mask
        times[name] = (
            1_700_000_000 + torch.cumsum(torch.randint(1, 5000, (batch_size, length), generator=g), 1)
        ) * mask
    return seqs, masks, times


_REGISTERED = False


def cpu_sdpa_flop_counting() -> None:
    """Teach ``FlopCounterMode`` the CPU SDPA kernels (torch 2.13 counts them as 0 FLOPs otherwise)."""
    global _REGISTERED
    if _REGISTERED:
        return

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
        return sdpa_flop_count(q, k, v)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
        return sdpa_backward_flop_count(grad_out, q, k, v)

    _REGISTERED = True


def counted_flops(fn: Any, backward: bool = True) -> tuple[int, int]:
    """(forward, backward) FLOPs of ``fn()`` (whose result is summed and back-propagated) by FlopCounterMode."""
    cpu_sdpa_flop_counting()
    with FlopCounterMode(display=False) as fc:
        out = fn()
        fwd = fc.get_total_flops()
        if backward:
            loss = sum(o.float().sum() for o in out) if isinstance(out, (tuple, list)) else out.float().sum()
            loss.backward()
    return fwd, fc.get_total_flops() - fwd
