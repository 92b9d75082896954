"""The trainer's view of the data: endless batches across epochs, with the position of every step.

TorchRec's pipeline reads two batches ahead of the step it trains, so the reader's own position is
not the position of the last trained step. ``TrainData`` records the reader's (tiny) state right
after producing each batch; a checkpoint after step ``s`` saves the state after batch ``s``, and a
resumed run continues with exactly the batch the uninterrupted run would have trained next.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from recscale.configs import JobConfig
from recscale.data.batch import Batch
from recscale.data.prepare import prepare_data
from recscale.data.reader import ParquetBatchReader
from recscale.sharding.process_group import DistInfo

log = logging.getLogger("recscale")

KEEP_STATES = 16
"""Positions remembered (the pipeline is at most 2 batches ahead of the trained step)."""


class TrainData:
    """Training batches of this rank, epoch after epoch, resumable at any trained step.

    Args:
        reader: this rank's reader of the training data.
        valid_path: the validation data that goes with it.
        pin_memory: hand out batches in pinned (page-locked) host memory, so the step's copy to a GPU
            runs asynchronously (``non_blocking=True``) and overlaps compute.
    """

    def __init__(self, reader: ParquetBatchReader, valid_path: str, pin_memory: bool = False) -> None:
        self.reader = reader
        self.valid_path = valid_path
        self.pin_memory = pin_memory
        self.steps_per_epoch = reader.num_batches()
        if self.steps_per_epoch == 0:
            raise ValueError(too_few_rows(reader))
        self._states: OrderedDict[int, dict[str, int]] = OrderedDict()
        self._start_state = reader.state_dict()

    def batches(self, start_step: int) -> Iterator[Batch]:
        """Batches from the current position on; batch ``start_step + k`` is the (k+1)-th produced."""
        index = start_step
        self._record(index)
        while True:
            produced = False
            for batch in self.reader:
                produced = True
                index += 1
                self._record(index)
                yield batch.pin_memory() if self.pin_memory else batch
            if not produced:
                raise RuntimeError(f"the training data at {self.reader.path} produced no batch in an epoch")

    def _state(self) -> dict[str, int]:
        """The reader's position now (what a checkpoint after the batch just produced saves)."""
        return self.reader.state_dict()

    def _record(self, index: int) -> None:
        """Remember the position after batch ``index`` (the last ``KEEP_STATES`` are kept)."""
        self._states[index] = self._state()
        while len(self._states) > KEEP_STATES:
            self._states.popitem(last=False)

    def state_after(self, step: int) -> dict[str, Any]:
        """The reader position right after the batch of ``step`` (what a resumed run continues from)."""
        if step not in self._states:
            raise RuntimeError(f"no recorded data position for step {step}; kept {list(self._states)}")
        return dict(self._states[step])

    def restore(self, state: dict[str, Any], saved_world_size: int) -> None:
        """Continue from a checkpointed position.

        With the same world size this is exact. With another world size, the stream of every rank is a
        different one; the reader then resumes at the same fraction of the epoch, and the run says so.
        """
        exact = saved_world_size == self.reader.world_size
        if not exact:
            log.warning(
                "resuming on %d ranks from a checkpoint of %d ranks: the data position is mapped to the same "
                "fraction of the epoch (examples of this epoch may be seen twice or not at all)",
                self.reader.world_size,
                saved_world_size,
            )
        self.reader.load_state_dict(state, strict=exact)


def train_reader(
    cfg: JobConfig, train: Path, batch_size: int, rank: int = 0, world_size: int = 1
) -> ParquetBatchReader:
    """Rank ``rank``'s reader of the training data at ``train``, ``batch_size`` examples a batch."""
    return ParquetBatchReader(
        train,
        cfg.data.features,
        cfg.embeddings,
        cfg.data.reader,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        mode="train",
    )


def make_train_data(cfg: JobConfig, info: DistInfo, per_rank_batch: int) -> TrainData:
    """This rank's training data (generated first when the source is synthetic and not cached yet)."""
    paths = prepare_data(cfg.data, cfg.embeddings)
    pin = pins_host_batches(info.device)
    if cfg.trainer.streaming.enabled:
        from recscale.trainer.streaming import make_streaming_data

        return make_streaming_data(cfg, paths.train, str(paths.valid), info.rank, info.world_size, per_rank_batch, pin)
    reader = train_reader(cfg, paths.train, per_rank_batch, info.rank, info.world_size)
    return TrainData(reader, str(paths.valid), pin_memory=pin)


def run_steps(cfg: JobConfig, steps_per_epoch: int) -> int:
    """Steps a run of ``cfg`` trains: all its stages' steps, else ``trainer.max_steps``, else its epochs'."""
    t = cfg.trainer
    if t.stages:
        return sum(stage.steps for stage in t.stages)
    if t.streaming.enabled:  # every period, ``passes`` times each; the stream ends there
        return min(t.max_steps or steps_per_epoch, steps_per_epoch)
    return t.max_steps or steps_per_epoch * t.epochs


def planned_steps(cfg: JobConfig, world_size: int) -> int:
    """``run_steps`` of ``cfg`` on ``world_size`` ranks, from the training data's Parquet metadata."""
    paths = prepare_data(cfg.data, cfg.embeddings)
    per_rank = cfg.trainer.batch_size // world_size
    if cfg.trainer.streaming.enabled:
        from recscale.trainer.streaming import make_streaming_data

        stream = make_streaming_data(cfg, paths.train, str(paths.valid), 0, world_size, per_rank, False)
        return run_steps(cfg, stream.steps_per_epoch)
    reader = train_reader(cfg, paths.train, per_rank, world_size=world_size)
    if reader.num_batches() == 0:
        raise ValueError(too_few_rows(reader))
    return run_steps(cfg, reader.num_batches())


def too_few_rows(reader: ParquetBatchReader) -> str:
    """Why a training set gives no step at all: its rows, the batch and the ranks."""
    world = reader.world_size
    tail = "" if reader.pad else "; data.reader.tail=drop leaves out a last partial batch"
    return (
        f"{reader.path}: {reader.num_rows} training rows are fewer than one step needs: trainer.batch_size "
        f"{reader.batch_size * world} ({reader.batch_size} per rank on {world} ranks{tail}): use a smaller batch "
        "or more data"
    )


def pins_host_batches(device: torch.device) -> bool:
    """Whether batches for ``device`` are pinned on the host: for a GPU (asynchronous copies), not on CPU."""
    return device.type == "cuda"


def pinned(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """``batches`` in pinned host memory when they go to a GPU (``pins_host_batches``), else as they are."""
    pin = pins_host_batches(device)
    for batch in batches:
        yield batch.pin_memory() if pin else batch


def make_eval_batches(cfg: JobConfig, info: DistInfo, path: str, batch_size: int = 0) -> ParquetBatchReader:
    """This rank's share of the data at ``path``: file order, tail padded, every example read once."""
    return ParquetBatchReader(
        path,
        cfg.data.features,
        cfg.embeddings,
        cfg.data.reader,
        batch_size=batch_size or cfg.trainer.batch_size // info.world_size,
        rank=info.rank,
        world_size=info.world_size,
        mode="eval",
    )
