"""ESMM's product form (Ma et al., SIGIR 2018): a conversion task trained on every impression.

A conversion is observed only after a click, so the conversion rate after a click,
``p_cvr = P(conversion | click)``, is usually trained on clicked rows only and served on every row: a
sample selection bias, and few training rows. ESMM instead trains the click-through-and-conversion
probability on every row,

    p_ctcvr = p_ctr · p_cvr = σ(z_c) · σ(z_v),      label  y_ctcvr = y_click · y_conversion,

so the conversion logit ``z_v`` still predicts ``p_cvr`` but is learned from the whole space, and the
click logit ``z_c`` gets this loss's gradient beside its own. Everything is in log space so that no
logit, however large, gives an infinite or NaN loss or gradient:

    log p_ctcvr       = logσ(z_c) + logσ(z_v)
    log(1 - p_ctcvr)  = log(σ(-z_c) + σ(z_c) σ(-z_v)) = logaddexp(logσ(-z_c), logσ(z_c) + logσ(-z_v))

(``1 - ab = (1 - a) + a (1 - b)``: a sum of two positive terms, so no cancellation near p = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from recscale.modules.tasks import Task


def ctcvr_log_probs(click_B: torch.Tensor, cvr_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_ctcvr, log(1 - p_ctcvr))`` ``[B]`` each, from the click and conversion logits ``[B]``."""
    log_ctr, log_cvr = F.logsigmoid(click_B), F.logsigmoid(cvr_B)
    log_p = log_ctr + log_cvr
    log_not_p = torch.logaddexp(F.logsigmoid(-click_B), log_ctr + F.logsigmoid(-cvr_B))
    return log_p, log_not_p


def ctcvr_bce(click_B: torch.Tensor, cvr_B: torch.Tensor, label_B: torch.Tensor) -> torch.Tensor:
    """``[B]`` binary cross-entropy of ``p_ctcvr`` against ``label_B`` (``y_click · y_conversion``, 0/1)."""
    log_p, log_not_p = ctcvr_log_probs(click_B.float(), cvr_B.float())
    return -(label_B * log_p + (1 - label_B) * log_not_p)


def ctcvr_logit(click_B: torch.Tensor, cvr_B: torch.Tensor) -> torch.Tensor:
    """``[B]`` the logit of ``p_ctcvr``: ``log p - log(1 - p)`` (what metrics read)."""
    log_p, log_not_p = ctcvr_log_probs(click_B.float(), cvr_B.float())
    return log_p - log_not_p


def ctcvr_columns(
    tasks: Sequence[Task],
    logits_nT: torch.Tensor,
    labels_nT: torch.Tensor,
    masks_nT: torch.Tensor,
    domain_masks_nT: torch.Tensor,
    oracle_nT: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Task], torch.Tensor | None]:
    """The evaluation's columns with one ``<task>_ctcvr`` column appended per ESMM task.

    Each extra column is ``p_ctcvr``'s logit, against ``y_given · y_task``, on every row of the task's
    domains (``domain_masks_nT``: the task's mask without its ``given`` condition); the oracle, when
    known, is ``p_given · p_task`` (the truth of a conversion task is its probability after a click).
    The extra tasks have weight 0: they are reported, not part of the task-weighted headline.
    """
    esmm = [i for i, t in enumerate(tasks) if t.esmm]
    if not esmm:
        return logits_nT, labels_nT, masks_nT, list(tasks), oracle_nT
    extra_logits = [ctcvr_logit(logits_nT[:, tasks[i].given], logits_nT[:, i]) for i in esmm]
    extra_labels = [labels_nT[:, tasks[i].given] * labels_nT[:, i] for i in esmm]
    extra_masks = [domain_masks_nT[:, i] for i in esmm]
    out_tasks = list(tasks) + [
        replace(tasks[i], name=f"{tasks[i].name}_ctcvr", weight=0.0, given=-1, esmm=False) for i in esmm
    ]
    if oracle_nT is not None:
        extra_oracle = [oracle_nT[:, tasks[i].given] * oracle_nT[:, i] for i in esmm]
        oracle_nT = torch.cat([oracle_nT, torch.stack(extra_oracle, dim=1)], dim=1)
    return (
        torch.cat([logits_nT, torch.stack(extra_logits, dim=1).to(logits_nT.dtype)], dim=1),
        torch.cat([labels_nT, torch.stack(extra_labels, dim=1)], dim=1),
        torch.cat([masks_nT, torch.stack(extra_masks, dim=1)], dim=1),
        out_tasks,
        oracle_nT,
    )
