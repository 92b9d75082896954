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
    given_mode: Literal["mask", "esmm"] = "mask"
    """How a ``given`` task learns. ``mask``: its loss is on the rows where the ``given`` label is 1 only (a
    conversion rate after a click, trained on clicked rows). ``esmm`` (Ma et al., SIGIR 2018, Entire Space
    Multi-Task Model): its logit is still the conversion rate after a click, ``p_cvr``, but it is trained on
    every row through ``p_ctcvr = p_<given> · p_cvr`` against ``label_<given> · label`` (binary cross-entropy,
    computed in log space); the ``given`` task keeps its own loss, and also receives this one's gradient.
    Metrics report the task on the ``given`` rows as with ``mask`` and ``p_ctcvr`` on every row as
    ``<metric>/<name>_ctcvr``. Needs ``given``, a ``bce`` task, one window."""
    windows: int = 1
    """Zipper attribution windows (delayed labels): the task gets this many heads; head w trains on the rows
    whose ``data.features.window`` is w (labels observed within window w, ``recscale data zipper``), and
    metrics and serving read the last head (the longest window). 1 = one head, no window column."""
    window_heads: Literal["linear", "offset", "scaled"] = "linear"
    """The window heads: ``linear`` (the arch's last layer has one output per window), ``offset`` (one
    output, each window adding a learned shift: every row trains the shared logit) or ``scaled`` (one output
    z, served as is; a shorter window k predicts ``σ(z) · F_k``, F_k the learned share of conversions it
    sees: the delayed-feedback model, exact when the delay does not depend on the example; ``bce`` only)."""
    window_shares: list[float] = field(default_factory=list)
    """``scaled`` heads: the starting F_k, one per window but the last, each in (0, 1); F_k is learned from
    there. ``recscale data zipper`` measures them (``seen_share`` of zipper.json: the share of the longest
    window's conversions each window sees, on impressions whose longest window has closed) and prints the
    setting. Empty = 1/2 each."""


@dataclass(kw_only=True)
class TeacherConfig:
    """What the model learns from a teacher's stored predictions (``data.features.teacher``).

    A large teacher scores the traffic asynchronously and its logits are joined to the rows; a row the
    teacher did not score (a cache miss) falls back to its own labels. Off without the column.
    """

    loss_weight: float = 1.0
    """Weight of the soft-label loss: binary cross-entropy of each ``bce`` task's prediction against the
    smoothed teacher probability, on the rows the teacher scored and the task applies to (0 = none)."""
    smoothing: float = 0.05
    """The teacher probability p becomes ``(1 - smoothing) p + smoothing / 2`` as a soft label."""
    as_feature: bool = True
    """Also feed the teacher's logits (clipped) and a hit flag to the dense arch as extra dense inputs."""
    clip: float = 8.0
    """Teacher logits fed as features are clipped to ``[-clip, clip]``."""
    head: Literal["serving", "auxiliary"] = "serving"
    """Which head learns from the teacher: ``serving`` (the served prediction itself: plain single-head
    distillation) or ``auxiliary`` (a separate distillation head on the same representation; the served head
    learns from labels only, so a biased teacher does not move what is served). ``auxiliary`` needs an arch
    with a representation before its head (``dlrm``, ``dcnv2``)."""
    label_scale: float = 1.0
    """``auxiliary``: the distillation head's soft label is ``min(1, label_scale x p)`` of the teacher
    probability p (before smoothing); > 1 lifts a teacher whose probabilities crowd near 0."""
    grad_scale: float = 1.0
    """``auxiliary``: the distillation heads' gradient into the shared representation is multiplied by this
    (the forward pass is unchanged); their own weights get the plain gradient."""
    adapter: bool = False
    """``auxiliary``: add a student adapter, a small MLP per task from the teacher's logit alone to a
    recalibrated logit, trained on this data's labels (it sees fresh labels, the teacher may be stale), and a
    second distillation head learning the adapter's probability (stop-gradient: the head does not train the
    adapter)."""
    adapter_hidden: int = 8
    """Hidden width of the adapter MLP (1 -> adapter_hidden -> 1, ReLU)."""
    adapter_update: Literal["joint", "before"] = "joint"
    """How the adapter trains: ``joint`` (with the model, by the dense optimizer, in the same step: the second
    head learns the adapter's value from before the step) or ``before`` (ExFM's order: each step the adapter
    first takes its own Adam step on the batch, at ``adapter_lr``; the second head then learns its updated
    value). ``before`` needs ``sharding.dense: ddp`` and no ``trainer.stages``."""
    adapter_lr: float = 0.001
    """``adapter_update: before``: the learning rate of the adapter's own Adam."""
    miss_target: Literal["skip", "label"] = "skip"
    """``auxiliary``: what the distillation heads learn on a row the teacher did not score: nothing (``skip``)
    or the row's label (``label``), so the heads are already trained when the teacher's first scores arrive
    (a stream's first period has none) instead of starting from their random initialisation."""
