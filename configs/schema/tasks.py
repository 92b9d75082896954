"""The ``model.tasks`` list: what a multi-task model predicts, from which label, with which loss and weight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class TaskConfig:
    """One prediction target (a head of the model, one logit): click, conversion, watch time...

    Rows where the task does not apply (another domain; a conversion task on rows without a click) are
    left out of the task's loss and metrics, not counted as negatives.
    """

    name: str
    """Name of the task in metrics (``auc/<name>``), reports and the serving outputs: letters, digits, ``_``,
    ``-`` and ``.``."""
    label: str = ""
    """Label column (empty: the column named like the task)."""
    loss: Literal["bce", "regression"] = "bce"
    """``bce``: 0/1 labels, binary cross-entropy on the logit, metrics AUC / logloss / NE; ``regression``: real
    labels (watch time...), squared error on the raw output, metrics MSE / MAE."""
    weight: float = 1.0
    """Weight of the task's loss in the training loss, and of its metrics in the task-weighted ``auc`` /
    ``logloss`` / ``ne`` (``mse``) that early stopping and the best checkpoint follow."""
    domains: list[int] = field(default_factory=list)
    """Domain ids (values of ``data.features.domain``) the task applies to; empty = every domain."""
    given: str = ""
    """Name of a ``bce`` task whose label must be 1 for this task to apply (a conversion observed only
    after a click: ``given: click``); empty = every row."""
