"""What a run records: ``metrics.jsonl`` lines and TensorBoard scalars (rank 0), throughput and MFU.

MFU is computed here and only here (aesthetics.md §7 rule 13):
``MFU = train FLOPs per example x examples/s per rank / peak dense FLOP/s per rank``, with the
model's analytic FLOPs (forward + exact backward, embedding lookups excluded, active experts only).
It is ``null`` when the device's peak is unknown. Sequence models count each batch at its real
sequence lengths (``BatchFlops``): padding is wasted work, not model FLOPs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from recscale.configs import JobConfig
from recscale.modules.flops import FlopCount, Lengths, total
from recscale.modules.registry import get_spec
from recscale.sharding.process_group import host_group
from recscale.trainer.run_dir import METRICS, TENSORBOARD

if TYPE_CHECKING:
    from recscale.data.batch import Batch


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl`` and scalars to TensorBoard (on rank 0 only).

    Args:
        run_dir: the run directory.
        enabled: write anything at all (true on rank 0).
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = open(run_dir / METRICS, "a") if enabled else None  # noqa: SIM115 - kept open for the run
        self._tb: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record: ``{"kind": kind, "step": step, "time": unix time, **values}``."""
        if not self.enabled or self._file is None:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush and close."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def mfu(flops_per_example: float, examples_per_s_per_rank: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    if not peak_tflops or examples_per_s_per_rank <= 0:
        return None
    return flops_per_example * examples_per_s_per_rank / (peak_tflops * 1e12)


def embedding_bandwidth(bytes_per_example: float | None, examples_per_s_per_rank: float) -> float | None:
    """Achieved embedding-row bandwidth per rank, GB/s (1e9 bytes): rows read per example x examples/s.

    Lookups are memory traffic, not FLOPs; compare this with the device's memory bandwidth (an H100
    SXM's HBM3 moves about 3,350 GB/s), not with a FLOP peak.
    """
    if bytes_per_example is None or examples_per_s_per_rank <= 0:
        return None
    return bytes_per_example * examples_per_s_per_rank / 1e9


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory of this process, MiB (device memory on CUDA, resident set on CPU)."""
    if device.type == "cuda":
        return {
            "mem_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "mem_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    import resource

    return {"mem_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class BatchFlops:
    """Model FLOPs of the batches this rank trains: at their real sequence lengths, and padded.

    A sequence model (``ModelSpec.uses_sequences``: Kunlun, gca_seq) runs its event sequences
    padded to ``max_length``; its model FLOPs count each example at its real lengths
    (``Lengths``, docs/measuring.md §"Sequence lengths"), so MFU does not credit padding as work.
    The padded count (every example at ``max_length``) is kept beside it and the gap between the
    two is the padding overhead. Other models' FLOPs do not depend on the batch: both counts agree.

    ``wrap`` notes each batch's real lengths (``min(events, max_length)``) as the reader yields it;
    ``step`` takes them in training order (the pipeline reads ahead but trains in order). The
    steps are counted in bulk by ``flush`` with the dense arch as it is then (the count depends on
    which weights train), one evaluation per log window instead of one per step; call ``enter_stage``
    when a stage changes what trains (it flushes, and keeps per-stage sums from then on).

    Args:
        dense: the dense arch (its ``flops(seq_lengths)`` takes ``Lengths`` when ``max_lengths`` is given).
        max_lengths: ``max_length`` per event type for a sequence model, or None.
    """

    def __init__(self, dense: nn.Module, max_lengths: dict[str, int] | None = None) -> None:
        self.dense = dense
        self.max_lengths = max_lengths
        self._read: deque[tuple[int, torch.Tensor | None]] = deque()  # (examples, lengths [E, B]) per batch
        self._pending: list[tuple[int, torch.Tensor | None, bool]] = []  # trained, not yet counted; steady?
        self.window = FlopSums()
        self.run = FlopSums()
        self.steady = FlopSums()
        self.stage: int | None = None  # the training stage the pending steps belong to (staged runs)
        self.stage_run: dict[int, FlopSums] = defaultdict(FlopSums)  # per stage: every step, and steady ones
        self.stage_steady: dict[int, FlopSums] = defaultdict(FlopSums)
        self._profiled: list[tuple[int, torch.Tensor | None]] = []  # steps inside a --profile window

    @classmethod
    def for_job(cls, cfg: JobConfig, dense: nn.Module) -> BatchFlops:
        """Real-length counting for the sequence models, a constant count for the others."""
        if not get_spec(cfg.model.arch).uses_sequences:
            return cls(dense)
        return cls(dense, {q.name: q.max_length for q in cfg.data.features.sequences})

    def wrap(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Pass ``batches`` through, noting each one's size and real sequence lengths."""
        for batch in batches:
            self._read.append((batch.batch_size, self._lengths(batch)))
            yield batch

    def _lengths(self, batch: Batch) -> torch.Tensor | None:
        """``[E, B]`` real lengths in ``max_lengths`` order (events beyond ``max_length`` are not read)."""
        if self.max_lengths is None or batch.sequences is None:
            return None
        kjt = batch.sequences
        keys = kjt.keys()
        per_key = kjt.lengths().view(len(keys), -1).to("cpu", torch.int64)
        rows = [per_key[keys.index(name)].clamp(max=cap) for name, cap in self.max_lengths.items()]
        return torch.stack(rows)

    def step(self, steady: bool, profiled: bool = False) -> None:
        """The batch read first was just trained.

        ``steady``: it counts towards the run's mean MFU; ``profiled``: it ran inside the ``--profile``
        window (see ``profiled_breakdown``).
        """
        examples, lengths = self._read.popleft()
        self._pending.append((examples, lengths, steady))
        if profiled:
            self._profiled.append((examples, lengths))

    def profiled_breakdown(self) -> dict[str, FlopCount]:
        """Per-module FLOPs per example of the profiled steps (at their real lengths); then forgets them.

        The ``--profile`` table divides each module's FLOPs by its measured time: at the padded count
        a sequence block's MFU would include its padding. Models without sequences: the plain count.
        """
        steps, self._profiled = self._profiled, []
        if self.max_lengths is None or not steps or any(lengths is None for _, lengths in steps):
            return self.dense.flops()  # type: ignore[operator,no-any-return]
        examples = sum(n for n, _ in steps)
        lengths_EB = torch.cat([lengths for _, lengths in steps], dim=1)  # type: ignore[misc]
        per_batch: dict[str, FlopCount] = self.dense.flops(  # type: ignore[operator]
            {name: Lengths(lengths_EB[e]) for e, name in enumerate(self.max_lengths)}
        )
        return {k: FlopCount(round(v.forward / examples), round(v.backward / examples)) for k, v in per_batch.items()}

    def flush(self) -> None:
        """Count the trained steps not counted yet, with the dense arch as it is now."""
        if not self._pending:
            return
        padded = total(self.dense.flops())  # type: ignore[operator]
        for steady in (False, True):
            part = [(n, lengths) for n, lengths, s in self._pending if s == steady]
            if not part:
                continue
            examples = sum(n for n, _ in part)
            sums = FlopSums(examples, padded.forward * examples, padded.train * examples)  # real = padded
            if self.max_lengths is not None and all(lengths is not None for _, lengths in part):
                lengths_EB = torch.cat([lengths for _, lengths in part], dim=1)  # type: ignore[misc]
                real = total(
                    self.dense.flops(  # type: ignore[operator]
                        {name: Lengths(lengths_EB[e]) for e, name in enumerate(self.max_lengths)}
                    )
                )
                sums.real_forward, sums.real_train = real.forward, real.train
                sums.tokens = int(lengths_EB.sum())
                sums.slots = examples * sum(self.max_lengths.values())
            self.window += sums
            self.run += sums
            if steady:
                self.steady += sums
            if self.stage is not None:
                self.stage_run[self.stage] += sums
                if steady:
                    self.stage_steady[self.stage] += sums
        self._pending.clear()

    def enter_stage(self, index: int) -> None:
        """Steps from now on belong to stage ``index``; the ones before count with the weights they trained."""
        self.flush()
        self.stage = index

    def take(self) -> FlopSums:
        """The FLOPs of the steps since the last call (counted now); resets the window."""
        self.flush()
        out, self.window = self.window, FlopSums()
        return out


class FlopSums:
    """FLOPs summed over examples, at real and at padded lengths, and the sequence slots they filled."""

    def __init__(self, examples: int = 0, padded_forward: int = 0, padded_train: int = 0) -> None:
        self.examples = examples
        self.padded_forward, self.padded_train = padded_forward, padded_train
        self.real_forward, self.real_train = padded_forward, padded_train
        self.tokens = 0  # real events in the sequences
        self.slots = 0  # sequence positions of the padded layout (0: no sequences)

    def __iadd__(self, other: FlopSums) -> FlopSums:
        for key in vars(self):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        return self

    def summed_over_ranks(self) -> FlopSums:
        """These sums added up over every rank of the job (a copy when alone), through ``host_group()``.

        Each rank counts the batches it trains; a sequence model's batches differ in real lengths
        from rank to rank, so the run's FLOPs per example is the mean over all ranks' examples.
        Summed as int64 (exact); a collective: every rank must call it at the same point.
        """
        keys = list(vars(self))
        values = torch.tensor([int(getattr(self, k)) for k in keys], dtype=torch.int64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values, group=host_group())
        out = FlopSums()
        for key, value in zip(keys, values.tolist(), strict=True):
            setattr(out, key, value)
        return out

    def per_example(self, padded: bool = False) -> FlopCount:
        """Mean FLOPs per example, at real or at padded lengths (0 when nothing was counted)."""
        n = max(self.examples, 1)
        fwd, train = (self.padded_forward, self.padded_train) if padded else (self.real_forward, self.real_train)
        return FlopCount(round(fwd / n), round((train - fwd) / n))

    def record(self) -> dict[str, float | None]:
        """``flops_per_example_train`` (real lengths), the padded one, and the padding fractions."""
        n = max(self.examples, 1)
        return {
            "flops_per_example_train": self.real_train / n,
            "flops_per_example_train_padded": self.padded_train / n,
            "padding/flops_fraction": 1 - self.real_train / self.padded_train
            if self.slots and self.padded_train
            else None,
            "padding/token_fraction": 1 - self.tokens / self.slots if self.slots else None,
        }
