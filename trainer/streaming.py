"""Streaming training (``trainer.streaming``): period after period, each scored before it is trained on.

``data.train_path`` holds one subdirectory per period, in name order (``day=00000/``, ``day=00001/``, ...).
The run trains ``passes`` pass(es) over period 1, then over period 2, and so on; model, optimizer state and
learning rate simply carry on. At the end of period p, before any step of period p + 1, the model scores all
of period p + 1: *progressive validation*, the evaluation of a model that has seen only earlier data, as a
production model is judged on tomorrow's traffic. The first period is not scored (no model has trained yet).

Each rank reads its share of each period (``data/partition.py``), so every rank runs the same number of
steps per period; a checkpoint records the period with the reader's position and a resumed run continues
with exactly the next batch.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recscale.configs import JobConfig
from recscale.data.batch import Batch
from recscale.data.files import write_json
from recscale.data.partition import period_subdirs
from recscale.data.reader import ParquetBatchReader
from recscale.trainer.data import TrainData, too_few_rows, train_reader
from recscale.trainer.run_dir import METRICS

log = logging.getLogger("recscale")

PREDICTIONS = "predictions"
"""``<run_dir>/predictions/<period>/rank<R>.parquet``: progressive scores (``trainer.streaming.predictions``)."""


def period_dirs(train: Path) -> list[Path]:
    """The periods of a streaming dataset: the subdirectories of ``train`` in name order.

    Raises:
        ValueError: ``train`` is not a directory of period subdirectories.
    """
    periods = period_subdirs(train)
    if len(periods) < 2:
        raise ValueError(
            f"trainer.streaming.enabled: {train} must hold one subdirectory per period (e.g. day=00000/, "
            f"day=00001/, ...; at least two), found {len(periods)}"
        )
    return periods


SKIP_HINT = "; if the stream starts part-way through its first period, trainer.streaming.skip_short_first=true skips it"


class StreamingTrainData(TrainData):
    """This rank's training batches, period after period, resumable at any trained step.

    Args:
        readers: one reader per period, in order.
        names: the periods' names (their directory names).
        valid_path: the validation data scored at the end.
        passes: passes over each period.
        pin_memory: hand out batches in pinned host memory (GPU runs).
        skipped: the leading periods left out as too short for one step (``skip_short_first``).
    """

    def __init__(
        self,
        readers: list[ParquetBatchReader],
        names: list[str],
        valid_path: str,
        passes: int = 1,
        pin_memory: bool = False,
        skipped: list[str] | None = None,
    ) -> None:
        self.readers = readers
        self.names = names
        self.valid_path = valid_path
        self.passes = passes
        self.pin_memory = pin_memory
        self.skipped = list(skipped or [])
        for i, reader in enumerate(readers):
            if reader.num_batches() == 0:
                hint = "" if i or self.skipped else SKIP_HINT
                raise ValueError(f"trainer.streaming: period {Path(reader.path).name}: {too_few_rows(reader)}{hint}")
        self.reader = readers[0]
        self.period_steps = [r.num_batches() * passes for r in readers]
        self.period_ends = np.cumsum(self.period_steps).tolist()
        self.steps_per_epoch = int(self.period_ends[-1])  # the whole stream is one "epoch"
        self._period = 0
        self._states: OrderedDict[int, dict[str, int]] = OrderedDict()

    def boundary_period(self, step: int) -> int:
        """The period whose training ends at ``step`` (-1 when ``step`` ends none)."""
        return self.period_ends.index(step) if step in self.period_ends else -1

    def batches(self, start_step: int) -> Iterator[Batch]:
        """Batches from the current position to the end of the last period."""
        index = start_step
        self._record(index)
        for period in range(self._period, len(self.readers)):
            self._period = period
            reader = self.readers[period]
            while _passes_done(reader) < self.passes:
                for batch in reader:
                    index += 1
                    self._record(index)
                    yield batch.pin_memory() if self.pin_memory else batch

    def _state(self) -> dict[str, int]:
        return {"period": self._period, **self.readers[self._period].state_dict()}

    def restore(self, state: dict[str, Any], saved_world_size: int) -> None:
        """Continue from a checkpointed position (its period, then the reader's place in it)."""
        state = dict(state)
        self._period = int(state.pop("period"))
        self.reader = self.readers[self._period]
        super().restore(state, saved_world_size)


def _passes_done(reader: ParquetBatchReader) -> int:
    """Whole passes the reader has made (a finished pass counts before the reader moves its epoch on)."""
    state = reader.state_dict()
    return int(state["epoch"]) + int(state["batches_done"] >= reader.num_batches())


def make_streaming_data(
    cfg: JobConfig, train: Path, valid: str, rank: int, world_size: int, per_rank_batch: int, pin_memory: bool
) -> StreamingTrainData:
    """This rank's streaming data over the periods under ``train``."""
    periods = period_dirs(train)
    readers = [train_reader(cfg, p, per_rank_batch, rank, world_size) for p in periods]
    short = 0  # leading periods left out (skip_short_first); otherwise a short one is refused below
    if cfg.trainer.streaming.skip_short_first:
        short = next((i for i, r in enumerate(readers) if r.num_batches() > 0), len(readers))
    if short and len(readers) - short < 2:
        raise ValueError(
            f"trainer.streaming.skip_short_first: {train}: {len(readers) - short} period(s) left after skipping "
            f"{short} too short for one step; a stream needs at least two"
        )
    for reader in readers[:short] if rank == 0 else []:
        log.warning("trainer.streaming.skip_short_first: skipped %s", too_few_rows(reader))
    names = [p.name for p in periods]
    passes = cfg.trainer.streaming.passes
    return StreamingTrainData(readers[short:], names[short:], valid, passes, pin_memory, skipped=names[:short])


def progressive_record(period: str, index: int, result: dict[str, Any]) -> dict[str, Any]:
    """The ``progressive`` metrics record of one scored period: its name and index, and the metrics."""
    return {"period": period, "period_index": index, **{k: v for k, v in result.items() if k != "final"}}


def write_predictions(run_dir: Path, period: str, rank: int, logits: torch.Tensor, task_names: list[str]) -> Path:
    """This rank's progressive scores of ``period`` (``[n, T]`` logits, padding removed) as Parquet.

    The ranks' files in rank order hold the period's rows in their order (each rank scores a contiguous
    share of the period's row stream), which is what ``recscale data attach-teacher`` relies on.
    """
    out = run_dir / PREDICTIONS / period
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({name: pa.array(logits[:, t].numpy().astype(np.float32)) for t, name in enumerate(task_names)})
    path = out / f"rank{rank:05d}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def write_predictions_index(run_dir: Path, names: list[str], world_size: int, task_names: list[str]) -> None:
    """``predictions/index.json``: which periods were scored, by how many ranks, and the columns."""
    write_json(
        run_dir / PREDICTIONS / "index.json",
        {"periods": names, "ranks": world_size, "columns": task_names, "kind": "logit"},
    )


def mean_ne(records: list[dict[str, Any]]) -> float | None:
    """Mean normalized entropy over the scored periods (None when none was scored or NE is undefined)."""
    values = [r["ne"] for r in records if isinstance(r.get("ne"), float) and math.isfinite(r["ne"])]
    return float(np.mean(values)) if values else None


def task_names(model: Any, num_logits: int = 1) -> list[str]:
    """The names of the model's serving logits (its tasks; ``task0``.. for a model without ``model.tasks``)."""
    tasks = getattr(model, "task_loss", None)
    if tasks is not None:
        return [t.name for t in tasks.tasks]
    return [f"task{t}" for t in range(num_logits)]


def streaming_summary(run_dir: Path, names: list[str], skipped: list[str] | None = None) -> dict[str, Any]:
    """The summary keys of a streaming run: the progressive records, their mean NE, the skipped periods.

    ``skipped``: the leading periods left out as too short (``skip_short_first``). Read from the file, so a
    resumed run reports the periods scored before the interruption too.
    """
    records = []
    path = run_dir / METRICS
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "progressive":
            records.append({k: v for k, v in record.items() if k not in ("kind", "time")})
    summary = {"periods": names, "progressive": records, "mean_ne": mean_ne(records)}
    return {"streaming": {**summary, "skipped": list(skipped)} if skipped else summary}
