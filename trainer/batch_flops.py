"""Model FLOPs of the batches a rank trains, at their real sequence lengths and padded.

MFU divides these FLOPs by time (``trainer/rates.py``). Sequence models count each batch at its
real sequence lengths: padding is wasted work, not model FLOPs.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from recscale.configs import JobConfig
from recscale.modules.flops import FlopCount, Lengths, flop_counter, sequence_flop_counter, total
from recscale.modules.perturbation import dense_passes
from recscale.modules.registry import get_spec
from recscale.sharding.process_group import host_group

if TYPE_CHECKING:
    from recscale.data.batch import Batch


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

    With ``model.perturbation`` (LSPR / SCR) a training step runs the dense arch on every example twice
    (clean and perturbed rows): ``passes`` = 2 multiplies every count, the profiled breakdown included.

    Args:
        dense: the dense arch (its ``flops(seq_lengths)`` takes ``Lengths`` when ``max_lengths`` is given).
        max_lengths: ``max_length`` per event type for a sequence model, or None.
        passes: dense forward + backward passes per example and step (``perturbation.dense_passes``).
    """

    def __init__(self, dense: nn.Module, max_lengths: dict[str, int] | None = None, passes: int = 1) -> None:
        self.passes = passes
        self.dense = flop_counter(dense)
        self.sequence_dense = sequence_flop_counter(dense) if max_lengths is not None else None
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
        passes = dense_passes(cfg.model.perturbation)
        if not (get_spec(cfg.model.arch).uses_sequences and cfg.data.features.sequences):
            return cls(dense, passes=passes)
        return cls(dense, {q.name: q.max_length for q in cfg.data.features.sequences}, passes)

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
        lengths = [x for _, x in steps if x is not None]
        if self.max_lengths is None or self.sequence_dense is None or not steps or len(lengths) < len(steps):
            return self.breakdown()
        examples = sum(n for n, _ in steps)
        lengths_EB = torch.cat(lengths, dim=1)
        per_batch = self.sequence_dense.flops({name: Lengths(lengths_EB[e]) for e, name in enumerate(self.max_lengths)})
        passes = self.passes
        return {
            k: FlopCount(round(v.forward * passes / examples), round(v.backward * passes / examples))
            for k, v in per_batch.items()
        }

    def breakdown(self) -> dict[str, FlopCount]:
        """Per-module FLOPs per trained example (padded lengths), ``passes`` times the dense arch's own count."""
        return {k: v.scaled(self.passes) for k, v in self.dense.flops().items()}

    def flush(self) -> None:
        """Count the trained steps not counted yet, with the dense arch as it is now."""
        if not self._pending:
            return
        padded = total(self.breakdown())
        for steady in (False, True):
            part = [(n, lengths) for n, lengths, s in self._pending if s == steady]
            if not part:
                continue
            examples = sum(n for n, _ in part)
            sums = FlopSums(examples, padded.forward * examples, padded.train * examples)  # real = padded
            known = [lengths for _, lengths in part if lengths is not None]
            if self.max_lengths is not None and self.sequence_dense is not None and len(known) == len(part):
                lengths_EB = torch.cat(known, dim=1)
                real = total(
                    self.sequence_dense.flops({name: Lengths(lengths_EB[e]) for e, name in enumerate(self.max_lengths)})
                ).scaled(self.passes)
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
