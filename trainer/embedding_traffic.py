"""Embedding traffic: bytes of table rows the batches read, for the achieved-bandwidth metric.

Embedding lookups are memory traffic, not FLOPs, so MFU leaves them out and the run reports them as
bytes instead: every id of a batch reads one row of its table in the forward pass, pooled features
and event sequences alike, at the table's storage type (``embeddings.tables[].data_type``: 4 bytes a
value in fp32, 2 in fp16). The count comes from the
batches as the reader produces them (the ids each rank feeds in); after the input all-to-all a rank
looks up the ids routed to its shards, which is the same number per rank on average.

Backward traffic (the gradient rows and the fused optimizer's state) is not counted: the metric is
"rows read per example", the quantity that scales with the pooling factors.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs import JobConfig
from recscale.data.batch import Batch
from recscale.modules.embeddings import row_bytes


class EmbeddingTraffic:
    """Counts the bytes of embedding rows that the batches passing through ``wrap`` read.

    Args:
        cfg: the job (feature -> table -> dim).
    """

    def __init__(self, cfg: JobConfig) -> None:
        rows = {t.name: row_bytes(t.dim or cfg.embeddings.dim, t.data_type) for t in cfg.embeddings.tables}
        self.row_bytes = {f.name: rows[f.table] for f in cfg.data.features.sparse}
        self.sequence_row_bytes = {q.name: rows[q.table] for q in cfg.data.features.sequences}
        self.bytes = 0
        self.examples = 0
        self.run_bytes = 0
        self.run_examples = 0

    def count(self, batch: Batch) -> int:
        """Bytes of rows that ``batch``'s ids read (pooled features and sequences)."""
        total = _kjt_bytes(batch.sparse, self.row_bytes)
        if batch.sequences is not None:
            total += _kjt_bytes(batch.sequences, self.sequence_row_bytes)
        return total

    def wrap(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Pass ``batches`` through, adding each one's bytes and examples to the running totals."""
        for batch in batches:
            nbytes, n = self.count(batch), batch.batch_size
            self.bytes += nbytes
            self.examples += n
            self.run_bytes += nbytes
            self.run_examples += n
            yield batch

    def take(self) -> float | None:
        """Bytes per example since the last call (None when no batch was read); resets the totals.

        The pipeline reads up to two batches ahead of the step it trains, so a window's count may
        include the next batches' ids; over a run the mean is exact.
        """
        per_example = self.bytes / self.examples if self.examples else None
        self.bytes, self.examples = 0, 0
        return per_example

    def run_mean(self) -> float | None:
        """Bytes per example over every batch read so far."""
        return self.run_bytes / self.run_examples if self.run_examples else None


def _kjt_bytes(kjt: KeyedJaggedTensor, row_bytes: dict[str, int]) -> int:
    """Σ over keys of (ids of that key) x (bytes of one row of its table)."""
    keys = kjt.keys()
    if not keys:
        return 0
    lengths: torch.Tensor = kjt.lengths()
    ids_per_key = lengths.view(len(keys), -1).sum(dim=1).tolist()
    return int(sum(n * row_bytes.get(k, 0) for k, n in zip(keys, ids_per_key)))
