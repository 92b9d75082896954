"""``model.tasks`` resolved: every task with its label column, and the checks that tie it to the data.

A job without ``model.tasks`` has one ``bce`` task of weight 1 per label column, named like the column;
one with ``model.tasks`` fills ``data.features.labels`` / ``value_labels`` from it when they are left at
their defaults. Everything downstream (loss, metrics, serving) reads ``resolve_tasks``.
"""

from __future__ import annotations

import math
import re

from recscale.configs.schema import JobConfig, TaskConfig

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
DEFAULT_LABELS = ["label"]


def resolve_tasks(cfg: JobConfig) -> list[TaskConfig]:
    """The job's tasks, in logit order, each with its ``label`` column filled in."""
    if not cfg.model.tasks:
        return [TaskConfig(name=label, label=label) for label in cfg.data.features.labels]
    return [
        TaskConfig(
            name=t.name,
            label=t.label or t.name,
            loss=t.loss,
            weight=t.weight,
            domains=t.domains,
            given=t.given,
            given_mode=t.given_mode,
            windows=t.windows,
            window_heads=t.window_heads,
        )
        for t in cfg.model.tasks
    ]


def fill_task_labels(cfg: JobConfig) -> JobConfig:
    """Set ``data.features.labels`` / ``value_labels`` from ``model.tasks`` where the config left them out."""
    if cfg.model.tasks:
        tasks = resolve_tasks(cfg)
        f = cfg.data.features
        if f.labels == DEFAULT_LABELS:
            f.labels = [t.label for t in tasks]
        if not f.value_labels:
            f.value_labels = [t.label for t in tasks if t.loss == "regression"]
        if not f.num_windows:
            f.num_windows = max(t.windows for t in tasks) if f.window else 0
    return cfg


def task_problems(cfg: JobConfig) -> list[str]:
    """What is wrong with ``model.tasks`` and its link to the data (``key.path: message`` lines)."""
    out: list[str] = []
    f = cfg.data.features
    tasks = resolve_tasks(cfg)
    labels = [t.label for t in tasks]
    if cfg.model.tasks and f.labels != labels:
        out.append(
            f"data.features.labels: {f.labels} differ from the labels of model.tasks {labels}; list the same "
            "columns in the same order, or leave data.features.labels out"
        )
    regression = [t.label for t in tasks if t.loss == "regression"]
    if sorted(f.value_labels) != sorted(regression) and cfg.model.tasks:
        out.append(
            f"data.features.value_labels: {f.value_labels} differ from the labels of the regression tasks "
            f"{regression}; leave data.features.value_labels out"
        )
    for i, name in enumerate(f.value_labels):
        if name not in f.labels:
            out.append(f"data.features.value_labels[{i}]: {name!r} is not one of data.features.labels {f.labels}")
    if f.window and not any(t.windows > 1 for t in tasks):
        out.append(f"data.features.window: {f.window!r} is read only for tasks with windows > 1 (model.tasks)")
    names = [t.name for t in tasks]
    kinds = {t.name: t.loss for t in tasks}
    for i, t in enumerate(cfg.model.tasks):
        where = f"model.tasks[{i}] ({t.name})"
        if not _NAME.match(t.name):
            out.append(f"{where}.name: expected letters, digits, '_', '-' or '.', got {t.name!r}")
        if names.count(t.name) > 1:
            out.append(f"{where}.name: task name {t.name!r} is used more than once")
        if not math.isfinite(t.weight) or t.weight < 0:
            out.append(f"{where}.weight: expected a finite value >= 0, got {t.weight}")
        if t.domains and not f.domain:
            out.append(f"{where}.domains: per-domain tasks need data.features.domain (a domain column)")
        for j, d in enumerate(t.domains):
            if d < 0:
                out.append(f"{where}.domains[{j}]: expected a domain id >= 0, got {d}")
        if t.given:
            if t.given not in kinds:
                out.append(f"{where}.given: no task named {t.given!r}; tasks: {', '.join(names)}")
            elif kinds[t.given] != "bce":
                out.append(f"{where}.given: task {t.given!r} is a regression task; expected a bce task (0/1 label)")
            elif t.given == t.name:
                out.append(f"{where}.given: a task cannot be conditioned on itself")
        out += _window_problems(cfg, where, t)
        if t.given_mode == "esmm":
            out += _esmm_problems(cfg, where, t)
    if cfg.model.tasks and not any(t.weight > 0 for t in cfg.model.tasks):
        out.append("model.tasks: every task has weight 0; expected at least one positive weight")
    teacher = cfg.model.teacher
    if teacher.loss_weight < 0:
        out.append(f"model.teacher.loss_weight: expected >= 0, got {teacher.loss_weight}")
    if not 0.0 <= teacher.smoothing < 1.0:
        out.append(f"model.teacher.smoothing: expected a value in [0, 1), got {teacher.smoothing}")
    if teacher.clip <= 0:
        out.append(f"model.teacher.clip: expected a positive number, got {teacher.clip}")
    out += _distillation_problems(cfg)
    metric = cfg.trainer.early_stopping.metric
    has_bce = any(t.loss == "bce" and t.weight > 0 for t in tasks)
    if metric == "mse" and not any(t.loss == "regression" and t.weight > 0 for t in tasks):
        out.append("trainer.early_stopping.metric: 'mse' needs a regression task of positive weight")
    if metric != "mse" and not has_bce:
        out.append(
            f"trainer.early_stopping.metric: {metric!r} needs a bce task of positive weight; "
            "with regression tasks only, use 'mse'"
        )
    return out


def _window_problems(cfg: JobConfig, where: str, t: TaskConfig) -> list[str]:
    f = cfg.data.features
    if t.windows < 1:
        return [f"{where}.windows: expected >= 1, got {t.windows}"]
    if t.windows == 1:
        return [f"{where}.window_shares: needs windows > 1, got windows: 1"] if t.window_shares else []
    if t.window_heads == "scaled" and t.loss != "bce":
        return [f"{where}.window_heads: scaled heads model a probability; they need loss: bce, got {t.loss!r}"]
    if t.window_shares and t.window_heads != "scaled":
        return [f"{where}.window_shares: start values of scaled heads, but window_heads is {t.window_heads!r}"]
    if t.window_shares and len(t.window_shares) != t.windows - 1:
        return [
            f"{where}.window_shares: expected {t.windows - 1} values (one per window but the last), "
            f"got {len(t.window_shares)}"
        ]
    if any(not 0.0 < x < 1.0 for x in t.window_shares):
        return [f"{where}.window_shares: expected each in (0, 1), got {t.window_shares}"]
    if not f.window:
        return [f"{where}.windows: {t.windows} Zipper windows need data.features.window (a window column)"]
    if f.num_windows != t.windows:
        return [f"{where}.windows: {t.windows}, but data.features.num_windows is {f.num_windows}; they must agree"]
    return []


def _esmm_problems(cfg: JobConfig, where: str, t: TaskConfig) -> list[str]:
    """``given_mode: esmm``: a bce task of one window, after an unconditioned bce task that covers its rows."""
    key = f"{where}.given_mode"
    if not t.given:
        return [f"{key}: esmm needs given (the task whose probability multiplies this one's, e.g. given: click)"]
    if t.loss != "bce":
        return [f"{key}: esmm needs a bce task (a conversion probability); {t.name!r} has loss {t.loss!r}"]
    if t.windows != 1:
        return [f"{key}: esmm does not go with Zipper windows (expected windows: 1, got {t.windows})"]
    by_name = {u.name: u for u in cfg.model.tasks}
    given = by_name.get(t.given)
    if given is None or given.loss != "bce" or given.name == t.name:
        return []  # reported under .given
    if given.given:
        return [f"{key}: esmm needs task {given.name!r} on every row, but it has given: {given.given!r}"]
    if given.windows != 1:
        return [f"{key}: esmm needs task {given.name!r} with one window, got windows: {given.windows}"]
    if given.domains and not (t.domains and set(t.domains) <= set(given.domains)):
        return [
            f"{key}: esmm trains on every row of the task's domains, but task {given.name!r} applies to domains "
            f"{given.domains} only; give this task domains among them"
        ]
    return []


def heads(cfg: JobConfig) -> int:
    """Outputs of the dense arch: one per task, ``windows`` for a Zipper task with ``linear`` heads."""
    return sum(t.windows if t.window_heads == "linear" else 1 for t in resolve_tasks(cfg))


def synthetic_task_problems(cfg: JobConfig) -> list[str]:
    """Checks of the generator's multi-task, multi-domain and delayed-label settings (``data.synthetic``)."""
    d = cfg.data
    s, f = d.synthetic, d.features
    out: list[str] = []
    if d.source != "synthetic":
        return out
    keys = ("task_interaction_scale", "task_domain_scale", "conversion_delay_mean_s", "conversion_delay_max_s")
    for key in (*keys, "drift_per_day"):
        if getattr(s, key) < 0:
            out.append(f"data.synthetic.{key}: expected >= 0, got {getattr(s, key)}")
    if not 0.0 < s.drift_memory <= 1.0:
        out.append(f"data.synthetic.drift_memory: expected a value in (0, 1], got {s.drift_memory}")
    if not 0.0 <= s.domain_feature_shift <= 1.0:
        out.append(f"data.synthetic.domain_feature_shift: expected a fraction in [0, 1], got {s.domain_feature_shift}")
    if (s.task_domain_scale > 0 or s.domain_feature_shift > 0) and (not f.domain or s.num_domains < 2):
        out.append(
            "data.synthetic.task_domain_scale / domain_feature_shift: need data.features.domain and num_domains >= 2"
        )
    out += _domain_group_problems(cfg)
    if s.conversion_label:
        if s.conversion_label not in f.labels[1:]:
            out.append(
                f"data.synthetic.conversion_label: {s.conversion_label!r} is not one of data.features.labels after "
                f"the first (the click): {f.labels[1:]}"
            )
        if not 0.0 < s.conversion_rate < 1.0:
            out.append(f"data.synthetic.conversion_rate: expected a probability in (0, 1), got {s.conversion_rate}")
    if s.delay_column and (not s.conversion_label or s.conversion_delay_mean_s <= 0):
        out.append("data.synthetic.delay_column: needs conversion_label and conversion_delay_mean_s > 0")
    if s.teacher_noise < 0:
        out.append(f"data.synthetic.teacher_noise: expected >= 0, got {s.teacher_noise}")
    if not 0.0 <= s.teacher_hit_rate <= 1.0:
        out.append(f"data.synthetic.teacher_hit_rate: expected a fraction in [0, 1], got {s.teacher_hit_rate}")
    if s.seconds_per_row <= 0:
        out.append(f"data.synthetic.seconds_per_row: expected a positive number, got {s.seconds_per_row}")
    return out


def _domain_group_problems(cfg: JobConfig) -> list[str]:
    """``data.synthetic.domain_groups``: a partition of the domains, with the domain column and a user feature."""
    s, f = cfg.data.synthetic, cfg.data.features
    if not s.domain_groups:
        return []
    members = sorted(d for group in s.domain_groups for d in group)
    if members != list(range(s.num_domains)) or any(not group for group in s.domain_groups):
        return [
            f"data.synthetic.domain_groups: expected non-empty groups that together hold each of the "
            f"{s.num_domains} domains 0..{s.num_domains - 1} once, got {s.domain_groups}"
        ]
    if not f.domain or len(f.sparse) < 2:
        return ["data.synthetic.domain_groups: needs data.features.domain and two sparse features (user, item)"]
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}.get(f.sparse[0].table, 0)
    if rows < len(s.domain_groups):
        return [f"data.synthetic.domain_groups: the user table has {rows} rows, fewer than the groups"]
    return []


DISTILLING_ARCHES = ("dlrm", "dcnv2")
"""Arches whose dense module has ``represent`` and ``head`` (``modules/distillation.py``)."""


def _distillation_problems(cfg: JobConfig) -> list[str]:
    """``model.teacher.head`` / ``label_scale`` / ``grad_scale`` / ``adapter`` (and its update) / ``miss_target``."""
    t = cfg.model.teacher
    out = []
    if t.label_scale <= 0:
        out.append(f"model.teacher.label_scale: expected a positive factor, got {t.label_scale}")
    if t.grad_scale < 0:
        out.append(f"model.teacher.grad_scale: expected >= 0, got {t.grad_scale}")
    if t.adapter_hidden < 1:
        out.append(f"model.teacher.adapter_hidden: expected a positive width, got {t.adapter_hidden}")
    if t.adapter and t.head != "auxiliary":
        out.append("model.teacher.adapter: the adapter's second head needs model.teacher.head: auxiliary")
    if t.adapter_update == "before":
        if t.adapter_lr <= 0:
            out.append(f"model.teacher.adapter_lr: expected a positive learning rate, got {t.adapter_lr}")
        if not t.adapter:
            out.append("model.teacher.adapter_update: before needs model.teacher.adapter: true")
        if cfg.sharding.dense != "ddp":
            out.append(
                f"model.teacher.adapter_update: before needs sharding.dense: ddp (DeepSpeed's optimizer would "
                f"own the adapter's weights); got {cfg.sharding.dense!r}"
            )
        if cfg.trainer.stages:
            out.append("model.teacher.adapter_update: before does not go with trainer.stages (they set requires_grad)")
    if t.miss_target == "label" and t.head != "auxiliary":
        out.append("model.teacher.miss_target: label needs model.teacher.head: auxiliary (served heads learn labels)")
    if t.head == "auxiliary" and cfg.data.features.teacher:
        if cfg.model.arch not in DISTILLING_ARCHES:
            out.append(
                f"model.teacher.head: auxiliary needs an arch with a representation before its head "
                f"({', '.join(DISTILLING_ARCHES)}); got model.arch {cfg.model.arch!r}"
            )
        if cfg.model.multitask.structure != "none":
            out.append("model.teacher.head: auxiliary does not go with model.multitask (per-task towers)")
        if cfg.model.perturbation.kind != "none":
            out.append("model.teacher.head: auxiliary does not go with model.perturbation (expected kind: none)")
    return out
