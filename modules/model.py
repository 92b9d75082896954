"""The whole model: sparse arch (embedding tables) + dense arch, with the training loss.

``RecModel`` is the top-level module that TorchRec's train pipeline traces: it reads
``batch.sparse`` (so the sharded tables' input all-to-all can be pipelined) and calls the dense arch,
which may be a plain module, a DDP module or a DeepSpeed engine. The same class holds the
unsharded reference model and the sharded one, so both compute the loss the same way.

The pipeline fx-traces ``forward`` (with the dense arch as a leaf) to find the tables' inputs, so
it must stay traceable: no Python control flow on tensor values or shapes.

Sequence models (``uses_sequences``) read ``batch.sequences`` (and ``batch.sequence_timestamps``)
too; they go to the sparse arch as plain attribute reads, so the pipeline also overlaps the
``EmbeddingCollection``'s input all-to-all, and the dense arch is called as
``dense(dense, pooled, sequences, masks, timestamps, domain)``; the sequence inputs are dicts by
event type of ``[B, L, D]`` fp32 embeddings, ``[B, L]`` bool masks and ``[B, L]`` int64 times.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.outputs import DenseOutput
from recscale.modules.perturbation import Perturbation
from recscale.modules.tasks import TaskLoss

StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
"""``(loss.detach(), logits [B, T], labels [B, T], weights [B], diagnostics)``: what evaluation and
metrics need from a forward pass (and what TorchRec's pipeline returns from a step)."""

ModelOutput = tuple[torch.Tensor, StepOutput]
"""``loss, StepOutput``: the loss to backpropagate, and the rest."""


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, mean over tasks, weighted per example, normalised by the batch size.

    Normalising by B (padding included) rather than by the weight sum keeps every real example's
    share of the global loss equal across ranks when a padded tail batch is uneven.
    """
    per_example = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none").mean(dim=1)
    return (per_example * weights).mean()


def teacher_inputs(teacher_BT: torch.Tensor, clip: float) -> torch.Tensor:
    """``[B, T + 1]``: the teacher's logits clipped to ``±clip`` (0 where it scored nothing) and a hit flag."""
    hit = torch.isfinite(teacher_BT).all(dim=1, keepdim=True).to(torch.float32)
    return torch.cat([torch.nan_to_num(teacher_BT.float(), nan=0.0).clamp(-clip, clip) * hit, hit], dim=1)


class RecModel(nn.Module):
    """Sparse arch + dense arch -> the tasks' weighted loss (+ weighted auxiliary loss).

    Args:
        sparse: embedding tables; ``sparse(kjt) -> [B, sum D]`` (maybe a DMP).
        dense: dense arch; ``dense(dense [B, N], pooled [B, sum D]) -> DenseOutput`` (maybe DDP or a
            DeepSpeed engine).
        compute_dtype: dtype of the dense arch's inputs (``bfloat16`` when its weights are bf16).
        autocast: run the dense arch under ``torch.autocast(compute_dtype)`` (DDP + bf16).
        device_type: ``cpu`` or ``cuda``, for autocast.
        aux_loss_weight: weight of the dense arch's auxiliary loss in the training loss.
        uses_sequences: the dense arch is a sequence model (``ModelSpec.uses_sequences``): the sparse arch
            gets ``batch.sequences`` and the dense arch the padded sequences and ``batch.domain``.
        uses_timestamps: pass ``batch.sequence_timestamps`` (some sequence has a timestamp column).
        uses_domain: a non-sequence dense arch that reads the domain: called as
            ``dense(dense, pooled, domain=batch.domain)``.
        task_loss: the per-task losses, weights and masks (``model.tasks``); None = every logit a ``bce``
            task of equal weight on every row (``weighted_bce``).
        teacher_clip: > 0: the batch's teacher logits (``batch.teacher [B, T]``, NaN = no prediction) join
            the dense features as ``[clip(z^T, ±teacher_clip) · hit, hit]`` (T + 1 columns); 0 = not fed.
        perturbation: ``model.perturbation`` (LSPR / SCR, ``modules/perturbation.py``): in training the dense
            arch runs once on ``[clean; perturbed]`` rows; None = off. Not with ``uses_sequences``.
        distills: the dense arch has distillation heads (``modules/distillation.py``): it is also given
            ``teacher=batch.teacher``.
        managed_ids: the remapper of ``collisions: managed`` tables (``modules/managed_ids.py``): raw ids of
            their features -> slots, before the tables; None = no managed table.
    """

    def __init__(
        self,
        sparse: nn.Module,
        dense: nn.Module,
        compute_dtype: torch.dtype = torch.float32,
        autocast: bool = False,
        device_type: str = "cpu",
        aux_loss_weight: float = 0.0,
        uses_sequences: bool = False,
        uses_timestamps: bool = False,
        uses_domain: bool = False,
        task_loss: TaskLoss | None = None,
        teacher_clip: float = 0.0,
        perturbation: Perturbation | None = None,
        distills: bool = False,
        managed_ids: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.sparse = sparse
        self.managed_ids = managed_ids
        self.dense = dense
        self.compute_dtype = compute_dtype
        self.autocast = autocast
        self.device_type = device_type
        self.aux_loss_weight = aux_loss_weight
        self.uses_sequences = uses_sequences
        self.uses_timestamps = uses_timestamps
        self.uses_domain = uses_domain
        self.task_loss = task_loss
        self.teacher_clip = teacher_clip
        self.distills = distills
        if perturbation is not None and uses_sequences:
            raise ValueError("model.perturbation.kind: not available for a sequence model (expected none)")
        self.perturbation = perturbation

    def forward(self, batch: Any) -> ModelOutput:
        """``batch`` is a ``recscale.data.Batch``; returns the loss and what evaluation needs."""
        # managed tables read slots (a KJT of their features only); the others read the batch's own KJT
        managed = {} if self.managed_ids is None else {"managed": self.managed_ids(batch.sparse)}
        if self.uses_sequences:
            timestamps = batch.sequence_timestamps if self.uses_timestamps else None
            out = self.sparse(batch.sparse, batch.sequences, timestamps, **managed)
            logits, aux, diagnostics = self._dense(batch, out[0], (out[1], out[2], out[3], batch.domain))
        else:
            pooled = self.sparse(batch.sparse, **managed)
            if self.perturbation is not None and self.training:
                return self._perturbed_forward(batch, pooled)
            domain = {"domain": batch.domain} if self.uses_domain else {}
            logits, aux, diagnostics = self._dense(batch, pooled, **domain)
        loss, logits = self._task_loss(logits, batch, batch.weights)
        if self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * aux.float()
        return loss, (loss.detach(), logits.detach().float(), batch.labels, batch.weights, diagnostics)

    def _task_loss(self, logits: torch.Tensor, batch: Any, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tasks' loss of ``[B, H]`` logits with example weights ``weights [B]``, and the ``[B, T]`` predictions."""
        if self.task_loss is None:
            return weighted_bce(logits, batch.labels, weights), logits
        loss = self.task_loss(logits, batch.labels, weights, batch.domain, batch.window, batch.teacher)
        return loss, self.task_loss.predictions(logits)  # [B, T]: the serving head of a Zipper task

    def _perturbed_forward(self, batch: Any, pooled: torch.Tensor) -> ModelOutput:
        """Training with ``model.perturbation``: the dense arch once on ``[clean; perturbed]`` (2B rows).

        One call, not two: a DDP module called twice before one backward breaks its reducer. The loss
        is LSPR's or SCR's (``modules/perturbation.py``); evaluation reads the clean half's predictions.
        """
        p = self.perturbation
        assert p is not None
        doubled = p.doubled_inputs(batch, pooled, teacher=self.teacher_clip > 0, domain=self.uses_domain)
        domain = {"domain": doubled.domain} if self.uses_domain else {}
        logits_2B, aux, diagnostics = self._dense(doubled, doubled.pooled, **domain)
        halves = logits_2B.chunk(2)
        loss, logits = self._task_loss(halves[0], batch, batch.weights)
        row_weights = p.row_weights(batch.weights, batch.domain)
        if p.kind == "lspr":
            loss = p.balanced(loss, self._task_loss(halves[1], batch, row_weights)[0])
        else:
            perturbed = self.task_loss.predictions(halves[1]) if self.task_loss is not None else halves[1]
            loss = loss + p.consistency(logits, perturbed, row_weights, batch.labels, batch.domain, self.task_loss)
        if self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * aux.float()
        return loss, (loss.detach(), logits.detach().float(), batch.labels, batch.weights, diagnostics)

    def _dense(
        self, batch: Any, pooled: torch.Tensor, sequence_inputs: tuple[Any, ...] = (), **kwargs: Any
    ) -> DenseOutput:
        """The dense arch on the cast inputs.

        Sequence embeddings stay fp32 (the arch casts them to ``pooled.dtype``): a dict in a traced
        forward cannot be iterated here.
        """
        dense = batch.dense
        if self.teacher_clip > 0:
            dense = torch.cat([dense, teacher_inputs(batch.teacher, self.teacher_clip)], dim=1)
        if self.distills:  # the auxiliary distillation heads and the adapter read the teacher's logits
            kwargs["teacher"] = batch.teacher
            if self.training and self.task_loss is not None and self.task_loss.distillation.adapter_first:
                weights = self.task_loss.adapter_row_weights(batch.labels, batch.weights, batch.domain, batch.teacher)
                kwargs["adapter_target"] = (batch.labels, weights)
        dense = dense.to(self.compute_dtype)
        pooled = pooled.to(self.compute_dtype)
        if self.autocast:
            with torch.autocast(device_type=self.device_type, dtype=self.compute_dtype):
                out: DenseOutput = self.dense(dense, pooled, *sequence_inputs, **kwargs)
            return out
        return self.dense(dense, pooled, *sequence_inputs, **kwargs)  # type: ignore[no-any-return]
