"""``ParquetBatchReader``: a resumable per-rank iterable of ``Batch`` over a Parquet file or directory.

Usage (one per rank; rank and world size are plain ints, no process group is needed)::

    reader = ParquetBatchReader(paths.train, cfg.data.features, cfg.embeddings, cfg.data.reader,
                                batch_size=cfg.trainer.batch_size // world_size, rank=rank, world_size=world_size)
    steps = reader.num_batches()          # the same on every rank
    for batch in reader:                  # one epoch; the next `for` runs the next epoch
        ...
        state = reader.state_dict()       # {"epoch": e, "batches_done": k, ...}: the position after it

The stream is a pure function of ``(seed, epoch, rank, world_size, num_workers)`` (see
``recscale.data.partition``), so ``state_dict`` costs a dict of a few ints and a resumed reader
(``load_state_dict``) yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig, ReaderConfig
from recscale.data.batch import Batch
from recscale.data.columns import check_schema, raw_id_tables, table_rows
from recscale.data.decode import DecodeSpec
from recscale.data.errors import BadRowCounter, DataError
from recscale.data.partition import (
    Catalog,
    EpochPlan,
    num_batches,
    open_catalog,
    plan_epoch,
    worker_batches,
    worker_batches_done,
)
from recscale.data.stream import BatchStream, StreamKey

STATE_KEYS = ("epoch", "batches_done", "world_size", "num_workers", "batch_size", "seed")


class ParquetBatchReader:
    """Batches of one rank from Parquet (see the module docstring).

    Args:
        path: a Parquet file or a directory of Parquet files.
        features: the feature schema (which columns, what they mean).
        embeddings: the tables (their rows bound the ids; ids of ``collisions: managed`` tables are raw).
        reader: shuffle, buffer, workers, tail and bad-row settings.
        batch_size: examples per batch on this rank.
        rank: this rank, ``0 <= rank < world_size``.
        world_size: ranks that split the data.
        mode: ``train`` (shuffle per ``reader.shuffle``, tail per ``reader.tail``) or ``eval`` (file order,
            tail padded with zero-weight rows: every example is read exactly once across ranks).
        seed: seed of the shuffle (default ``reader.seed``).
    """

    def __init__(
        self,
        path: str | Path,
        features: FeatureSchemaConfig,
        embeddings: EmbeddingsConfig,
        reader: ReaderConfig,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        mode: Literal["train", "eval"] = "train",
        seed: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode: expected 'train' or 'eval', got {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), got {rank}")
        self.path = str(path)
        self.features = features
        self.config = reader
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.mode = mode
        self.seed = reader.seed if seed is None else seed
        self.shuffle = reader.shuffle and mode == "train"
        self.pad = mode == "eval" or reader.tail == "pad"
        self.catalog: Catalog = open_catalog(path)
        self.with_oracle = _check_files(self.catalog, features)
        self.spec = DecodeSpec(
            features=features,
            rows=table_rows(embeddings),
            skip_bad_rows=reader.on_bad_row == "skip",
            with_oracle=self.with_oracle,
            raw_id_tables=raw_id_tables(embeddings),
        )
        self._epoch = 0
        self._batches_done = 0
        self._counter = BadRowCounter()
        self._worker_counters: dict[int, BadRowCounter] = {}

    # ------------------------------------------------------------------------------ position

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches every rank runs in an epoch (from Parquet metadata; the same for every epoch)."""
        return num_batches(self.catalog.num_rows, self.world_size, self.batch_size, self.pad)

    def __len__(self) -> int:
        return self.num_batches()

    @property
    def num_rows(self) -> int:
        """Rows in the whole data set (all ranks)."""
        return self.catalog.num_rows

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self._epoch, self._batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """The position after the last batch yielded: a few ints, cheap enough to call after every batch."""
        return {
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "world_size": self.world_size,
            "num_workers": self.config.num_workers,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue from ``state``; the next batch is the one the saving run would have read next.

        Args:
            state: a ``state_dict()``.
            strict: the stream depends on world size, loader workers, batch size and seed; if one differs,
                raise (``True``) or resume at the same fraction of the epoch (``False``: approximate, some
                examples of that epoch may be seen twice or not at all).
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"reader state: missing keys {missing}; expected a ParquetBatchReader.state_dict()")
        mine = self.state_dict()
        changed = [f"{k} {state[k]} -> {mine[k]}" for k in STATE_KEYS[2:] if int(state[k]) != mine[k]]
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if changed:
            if strict:
                raise ValueError(
                    f"reader state: cannot resume the exact stream because {', '.join(changed)} changed; "
                    "resume with the same settings, or pass strict=False to resume at the same fraction of the epoch"
                )
            old_total = num_batches(self.num_rows, int(state["world_size"]), int(state["batch_size"]), self.pad)
            done = done * self.num_batches() // max(old_total, 1)
        self._epoch, self._batches_done = epoch, done
        self._normalise()

    def _normalise(self) -> None:
        if self._batches_done >= self.num_batches():
            self._epoch, self._batches_done = self._epoch + 1, 0

    def stats(self) -> dict[str, object]:
        """Rows skipped by ``on_bad_row: skip`` so far in this process (all loader workers included)."""
        total = BadRowCounter()
        total.merge(self._counter)
        for counter in self._worker_counters.values():
            total.merge(counter)
        return total.as_dict()

    # ------------------------------------------------------------------------------ iteration

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's epoch plan (which rows, which windows)."""
        return plan_epoch(
            self.catalog,
            epoch=self._epoch if epoch is None else epoch,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            buffer_rows=self.config.shuffle_buffer_rows,
            pad=self.pad,
        )

    def _stream(self, epoch: int, counter: BadRowCounter) -> BatchStream:
        key = StreamKey(self.seed, epoch, self.rank, self.world_size)
        return BatchStream(self.catalog, self.plan(epoch), key, self.spec, counter)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; the epoch counter moves on when it is exhausted."""
        self._normalise()
        epoch, total = self._epoch, self.num_batches()
        if self.config.num_workers == 0:
            stream = self._stream(epoch, self._counter)
            try:
                for batch in stream.batches(self._batches_done, total):
                    self._batches_done += 1
                    yield batch
            finally:
                stream.close()
        else:
            for batch in self._iter_workers(epoch, total):
                self._batches_done += 1
                yield batch
        if self._epoch == epoch and self._batches_done >= total:
            self._epoch, self._batches_done = epoch + 1, 0

    def _iter_workers(self, epoch: int, total: int) -> Iterator[Batch]:
        workers = self.config.num_workers
        dataset = _WorkerRuns(self, epoch, total, self._batches_done)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)
        seen: dict[int, BadRowCounter] = {}
        batches = iter(loader)
        try:
            for batch, worker, counter in batches:
                seen[worker] = counter
                self._worker_counters = seen
                yield batch
        finally:
            # stop the workers now: a worker's exception keeps the loader iterator alive in its traceback
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            for counter in seen.values():
                self._counter.merge(counter)
            self._worker_counters = {}


class _WorkerRuns(IterableDataset):  # type: ignore[type-arg]
    """Loader worker i makes the batch run of logical worker ``(done + i) % num_workers``.

    The rotation makes the DataLoader's round-robin (which starts at worker 0) continue exactly where
    the saved position left off.
    """

    def __init__(self, reader: ParquetBatchReader, epoch: int, total: int, done: int) -> None:
        self.reader = reader
        self.epoch = epoch
        self.total = total
        self.done = done

    def __iter__(self) -> Iterator[tuple[Batch, int, BadRowCounter]]:
        info = get_worker_info()
        assert info is not None, "_WorkerRuns runs only inside DataLoader workers"
        torch.set_num_threads(1)
        workers = info.num_workers
        logical = (self.done + info.id) % workers
        first, stop = worker_batches(self.total, workers, logical)
        start = first + worker_batches_done(self.done, workers, logical, stop - first)
        counter = BadRowCounter()
        stream = self.reader._stream(self.epoch, counter)
        try:
            for batch in stream.batches(start, stop):
                yield batch, logical, counter
        finally:
            stream.close()


def _check_files(catalog: Catalog, features: FeatureSchemaConfig) -> bool:
    """Check every file's columns; returns whether the oracle column is there (all files or none)."""
    has_oracle = [bool(features.oracle) and features.oracle in s.names for s in catalog.schemas]
    with_oracle = any(has_oracle)
    if with_oracle and not all(has_oracle):
        missing = catalog.files[has_oracle.index(False)]
        raise DataError(
            f"{missing}: column {features.oracle!r} (oracle) is missing but other files under {catalog.root} have it"
        )
    for file, schema in zip(catalog.files, catalog.schemas):
        check_schema(schema, features, file, with_oracle)
    return with_oracle
