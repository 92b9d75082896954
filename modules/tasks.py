"""The training loss of a multi-task model: one term per task, masked to the rows where the task applies.

Task t has a loss (``bce`` on the logit, or squared error on the raw output for ``regression``), a weight
``w_t``, optionally the domains it applies to and a ``given`` task whose label must be 1 (a conversion
observed only after a click). With ``m[b, t]`` = 1 where task t applies to row b and ``ω_b`` the example
weight (0 for padding):

    batch:  L = Σ_t w_t · Σ_b ω_b m[b,t] ℓ[b,t] / B                  / Σ_t w_t
    rows:   L = Σ_t w_t · Σ_b ω_b m[b,t] ℓ[b,t] / max(1, Σ_b ω_b m[b,t]) / Σ_t w_t

``batch`` (the default) divides by the batch size B, padding included, so every real row's share of the
global loss is the same on any number of ranks. With one task, or equal weights and no masks, both reduce
to the plain mean of the per-task losses. No value is read on the host: the step stays sync-free.

A Zipper task (``windows`` K > 1, delayed labels) owns K consecutive logits, one head per attribution
window: row b trains head ``window[b]`` (its label was observed within that window) and the task's
prediction — what metrics and serving read — is the last head, the longest window. The dense arch emits
``H = Σ_t K_t`` logits; ``predictions`` picks the T serving heads.

With a teacher's stored logits ``z^T`` (NaN where it scored nothing) each ``bce`` task adds a soft-label
term on the rows the teacher scored, normalised like its own loss:

    L += λ · Σ_t w_t · Σ_b ω_b m[b,t] h[b,t] BCE(ŷ[b,t], (1 - ε) σ(z^T[b,t]) + ε/2) / B  / Σ_t w_t

A ``given`` task in ESMM form (``given_mode: esmm``, ``modules/esmm.py``) trains on every row of its
domains: its ``ℓ[b,t]`` is the BCE of ``σ(z_given) · σ(z_t)`` against ``y_given · y_t``; evaluation still
masks it to the ``given`` rows and adds its ``<task>_ctcvr`` columns. With learned task weights
(``model.task_weighting: uncertainty``, ``modules/task_uncertainty.py``) the dense arch appends T log
variances after its other outputs and the per-task losses are combined by ``uncertainty_weighted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recscale.configs.schema import TaskConfig
from recscale.modules.esmm import ctcvr_bce, ctcvr_columns
from recscale.modules.task_uncertainty import uncertainty_weighted


@dataclass(frozen=True)
class Task:
    """One task as the model sees it (``model.tasks`` resolved)."""

    name: str
    loss: Literal["bce", "regression"] = "bce"
    weight: float = 1.0
    domains: tuple[int, ...] = ()
    """Domain ids the task applies to (empty: all)."""
    given: int = -1
    """Index of the task whose label must be 1, or -1."""
    windows: int = 1
    """Zipper heads (attribution windows); 1 = a plain task."""
    esmm: bool = False
    """``given_mode: esmm``: trained as ``p_given · p_task`` on every row (``modules/esmm.py``)."""


@dataclass(frozen=True)
class Distillation:
    """How the teacher's soft labels are learned (``model.teacher``; ``modules/distillation.py``)."""

    head: Literal["serving", "auxiliary"] = "serving"
    """``serving``: the served logit learns them; ``auxiliary``: a distillation head after the served ones."""
    label_scale: float = 1.0
    """``auxiliary``: the soft label is ``min(1, label_scale x p)``."""
    adapter: bool = False
    """``auxiliary``: a second head learns the adapter's probability, and the adapter learns the labels."""
    miss_target: Literal["skip", "label"] = "skip"
    """``auxiliary``: on rows the teacher did not score, the distillation heads learn nothing (``skip``) or the
    row's own label (``label``), so they are trained before the first teacher score arrives."""
    adapter_first: bool = False
    """The adapter takes its own step before the model's (``adapter_update: before``): its label loss is not
    part of the model's loss (``TaskLoss.adapter_row_weights`` gives that step its rows)."""


def tasks_from_config(tasks: Sequence[TaskConfig]) -> list[Task]:
    """``resolve_tasks(cfg)`` -> ``Task`` list (``given`` as an index)."""
    index = {t.name: i for i, t in enumerate(tasks)}
    return [
        Task(
            t.name,
            t.loss,
            t.weight,
            tuple(t.domains),
            index[t.given] if t.given else -1,
            t.windows,
            esmm=bool(t.given) and t.given_mode == "esmm",
        )
        for t in tasks
    ]


class TaskLoss(nn.Module):
    """The weighted, masked multi-task loss (module docstring), and the masks evaluation reuses.

    Args:
        tasks: in logit order.
        normalization: ``batch`` or ``rows`` (module docstring).
        teacher_weight: λ of the soft-label term (0 = none).
        smoothing: ε of the soft labels.
        distillation: which head learns the soft labels; with ``auxiliary`` the logits carry, after the H
            served ones, T distillation logits (and, with the adapter, T second-head and T adapter logits).
        uncertainty: learned task weights: the logits end with T log variances (``TaskUncertainty``).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        normalization: Literal["batch", "rows"] = "batch",
        teacher_weight: float = 0.0,
        smoothing: float = 0.05,
        distillation: Distillation | None = None,
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("TaskLoss: expected at least one task")
        self.tasks = list(tasks)
        self.normalization = normalization
        self.teacher_weight = teacher_weight
        self.smoothing = smoothing
        self.distillation = distillation or Distillation()
        self.uncertainty = uncertainty
        self.esmm = [i for i, t in enumerate(tasks) if t.esmm]
        total = sum(t.weight for t in tasks)
        self.register_buffer("weights", torch.tensor([t.weight / total for t in tasks]), persistent=False)
        self.register_buffer("is_bce", torch.tensor([t.loss == "bce" for t in tasks]), persistent=False)
        for i, t in enumerate(tasks):
            if t.domains:
                self.register_buffer(f"domains_{i}", torch.tensor(t.domains, dtype=torch.int64), persistent=False)
        self.all_bce = all(t.loss == "bce" for t in tasks)
        self.masked = any(t.domains or t.given >= 0 for t in tasks)
        self.offsets = [sum(t.windows for t in tasks[:i]) for i in range(len(tasks))]
        self.num_heads = sum(t.windows for t in tasks)
        self.windowed = any(t.windows > 1 for t in tasks)
        self.serving = [o + t.windows - 1 for o, t in zip(self.offsets, tasks)]

    def masks(self, labels_BT: torch.Tensor, domain_B: torch.Tensor | None, training: bool = False) -> torch.Tensor:
        """``m [B, T]`` float: 1 where task t applies to row b (its domains, its ``given`` label is 1).

        ``training``: the rows each task's label loss is on (an ESMM task's: every row of its domains).
        """
        columns = []
        for i, t in enumerate(self.tasks):
            m = torch.ones_like(labels_BT[:, 0])
            if t.domains:
                assert domain_B is not None, f"task {t.name} has domains but the batch has no domain column"
                allowed = getattr(self, f"domains_{i}").to(domain_B.device)
                m = m * (domain_B.unsqueeze(1) == allowed).any(dim=1).to(m.dtype)
            if t.given >= 0 and not (training and t.esmm):
                m = m * (labels_BT[:, t.given] == 1).to(m.dtype)
            columns.append(m)
        return torch.stack(columns, dim=1)

    def split_log_variance(self, logits_BH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The dense arch's outputs without the learned log variances, and those ``s [T]`` (None without)."""
        if not self.uncertainty:
            return logits_BH, None
        T = len(self.tasks)
        # every row carries the same s: read row 0 (an empty batch gives zeros, and no gradient)
        return logits_BH[:, :-T], logits_BH[:1, -T:].float().sum(dim=0)

    def predictions(self, logits_BH: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` each task's prediction logit: its only head, or its longest window's (Zipper)."""
        return self._served(self.split_log_variance(logits_BH)[0])

    def _served(self, logits_BH: torch.Tensor) -> torch.Tensor:
        """``predictions`` of outputs without log variances."""
        if self.distillation.head == "auxiliary":
            logits_BH = logits_BH[:, : self.num_heads]  # the distillation heads come after the served ones
        return logits_BH[:, self.serving] if self.windowed else logits_BH

    def training_logits(self, logits_BH: torch.Tensor, window_B: torch.Tensor | None) -> torch.Tensor:
        """``[B, T]`` the logit each row trains per task: a Zipper task's head of the row's window.

        Without a window column (evaluation data) every row reads the last head.
        """
        if not self.windowed or window_B is None:
            return self._served(logits_BH)
        columns = []
        for o, t in zip(self.offsets, self.tasks):
            if t.windows == 1:
                columns.append(logits_BH[:, o])
            else:
                heads = logits_BH[:, o : o + t.windows]
                index = window_B.clamp(0, t.windows - 1).unsqueeze(1)  # decode checked window < num_windows
                columns.append(heads.gather(1, index).squeeze(1))
        return torch.stack(columns, dim=1)

    def per_element(self, logits_BT: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
        """``ℓ [B, T]``: BCE with logits for ``bce`` tasks, squared error for ``regression`` tasks."""
        logits_BT = logits_BT.float()
        bce = F.binary_cross_entropy_with_logits(logits_BT, labels_BT, reduction="none")
        if self.all_bce:
            return bce
        return torch.where(self.is_bce, bce, (logits_BT - labels_BT).square())

    def label_losses(self, logits_BT: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
        """``ℓ [B, T]`` of the training loss: ``per_element``, with each ESMM task's ``p_ctcvr`` BCE."""
        per_BT = self.per_element(logits_BT, labels_BT)
        if not self.esmm:
            return per_BT
        for i in self.esmm:  # Python indices only: the pipeline fx-traces this
            g = self.tasks[i].given
            ctcvr_B = ctcvr_bce(logits_BT[:, g], logits_BT[:, i], labels_BT[:, g] * labels_BT[:, i])
            per_BT = torch.cat([per_BT[:, :i], ctcvr_B.unsqueeze(1), per_BT[:, i + 1 :]], dim=1)
        return per_BT

    def evaluation_columns(
        self,
        logits_nT: torch.Tensor,
        labels_nT: torch.Tensor,
        domain_n: torch.Tensor | None,
        oracle_nT: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Task], torch.Tensor | None]:
        """What evaluation scores: ``(logits, labels, masks, tasks, oracle)``.

        The ESMM tasks add their ``<task>_ctcvr`` columns (``modules/esmm.py``).
        """
        masks_nT = self.masks(labels_nT, domain_n)
        if not self.esmm:
            return logits_nT, labels_nT, masks_nT, self.tasks, oracle_nT
        domain_masks = self.masks(labels_nT, domain_n, training=True)
        return ctcvr_columns(self.tasks, logits_nT, labels_nT, masks_nT, domain_masks, oracle_nT)

    def forward(
        self,
        logits_BH: torch.Tensor,
        labels_BT: torch.Tensor,
        weights_B: torch.Tensor,
        domain_B: torch.Tensor | None = None,
        window_B: torch.Tensor | None = None,
        teacher_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scalar training loss of the model's ``[B, H]`` logits."""
        logits_BH, log_variance_T = self.split_log_variance(logits_BH)
        logits_BT = self.training_logits(logits_BH[:, : self.num_heads], window_B)
        rows = weights_B.unsqueeze(1).expand_as(logits_BT)
        label_rows = rows
        if self.masked:
            masks = self.masks(labels_BT, domain_B)
            label_rows = rows * (self.masks(labels_BT, domain_B, training=True) if self.esmm else masks)
            rows = rows * masks
        loss = self._reduce(self.label_losses(logits_BT, labels_BT) * label_rows, label_rows, log_variance_T)
        if teacher_BT is not None and self.teacher_weight > 0:
            loss = loss + self._distillation_loss(logits_BH, labels_BT, rows, teacher_BT)
        return loss

    def _distillation_loss(
        self, logits_BH: torch.Tensor, labels_BT: torch.Tensor, rows_BT: torch.Tensor, teacher_BT: torch.Tensor
    ) -> torch.Tensor:
        """The teacher's terms on the rows it scored (module docstring; ``modules/distillation.py``)."""
        d = self.distillation
        hit_BT = torch.isfinite(teacher_BT)
        kd_rows = self._scored_rows(rows_BT, teacher_BT)
        p_teacher = torch.sigmoid(torch.nan_to_num(teacher_BT.float(), nan=0.0))
        if d.head == "serving":
            return self.teacher_weight * self._soft_bce(self._served(logits_BH), p_teacher, kd_rows)
        T, H = len(self.tasks), self.num_heads
        head_rows = kd_rows
        if d.miss_target == "label":  # a miss row's distillation targets are its own label
            head_rows = rows_BT * self.is_bce.to(rows_BT.dtype)
        target = torch.where(hit_BT, (p_teacher * d.label_scale).clamp(max=1.0), labels_BT.float())
        loss = self.teacher_weight * self._soft_bce(logits_BH[:, H : H + T], target, head_rows)
        if d.adapter:
            adapter_BT = logits_BH[:, H + 2 * T : H + 3 * T]
            if not d.adapter_first:
                fresh = F.binary_cross_entropy_with_logits(adapter_BT.float(), labels_BT, reduction="none")
                loss = loss + self._reduce(fresh * kd_rows, kd_rows)
            recalibrated = torch.where(hit_BT, torch.sigmoid(adapter_BT.detach().float()), labels_BT.float())
            loss = loss + self.teacher_weight * self._soft_bce(logits_BH[:, H + T : H + 2 * T], recalibrated, head_rows)
        return loss

    def adapter_row_weights(
        self, labels_BT: torch.Tensor, weights_B: torch.Tensor, domain_B: torch.Tensor | None, teacher_BT: torch.Tensor
    ) -> torch.Tensor:
        """``[B, T]``: each row's weight in its task's mean adapter loss, as the joint loss weights it.

        Rows the teacher scored, of ``bce`` tasks that apply to them, times the example weights, divided
        like the task loss (``normalization``: by the batch or by the task's rows); 0 elsewhere.
        """
        rows_BT = weights_B.unsqueeze(1).expand_as(labels_BT)
        if self.masked:
            rows_BT = rows_BT * self.masks(labels_BT, domain_B)
        kd_rows = self._scored_rows(rows_BT, teacher_BT)
        return kd_rows / self._denominator(kd_rows)

    def _scored_rows(self, rows_BT: torch.Tensor, teacher_BT: torch.Tensor) -> torch.Tensor:
        """``rows_BT`` on the rows the teacher scored, of ``bce`` tasks; 0 elsewhere."""
        return rows_BT * (torch.isfinite(teacher_BT) & self.is_bce).to(rows_BT.dtype)

    def _denominator(self, rows_BT: torch.Tensor) -> torch.Tensor | int:
        """What a task's summed loss is divided by: its rows (``rows`` normalization) or the batch size."""
        if self.normalization == "rows":
            return rows_BT.sum(dim=0).clamp_min(1.0)
        return rows_BT.shape[0]

    def _soft_bce(self, logits_BT: torch.Tensor, p_BT: torch.Tensor, rows_BT: torch.Tensor) -> torch.Tensor:
        """BCE against smoothed soft labels ``(1 - ε) p + ε / 2`` on ``rows``, reduced like the task loss."""
        soft = p_BT * (1 - self.smoothing) + self.smoothing / 2
        per = F.binary_cross_entropy_with_logits(logits_BT.float(), soft, reduction="none")
        return self._reduce(per * rows_BT, rows_BT)

    def _reduce(
        self, per_BT: torch.Tensor, rows_BT: torch.Tensor, log_variance_T: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Task-weighted sum of per-task means: over the batch (``batch``) or the task's rows (``rows``).

        With ``log_variance_T`` the tasks are weighted by their learned uncertainty too (``uncertainty_weighted``).
        """
        per_task = per_BT.sum(dim=0) / self._denominator(rows_BT)
        if log_variance_T is not None:
            return uncertainty_weighted(per_task, log_variance_T, self.weights, self.is_bce)
        return (per_task * self.weights).sum()


def default_tasks(num_tasks: int) -> list[Task]:
    """``num_tasks`` unnamed ``bce`` tasks of weight 1 (a model built without a config)."""
    return [Task(name=f"task{t}") for t in range(num_tasks)]
