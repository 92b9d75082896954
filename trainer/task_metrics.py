"""Per-task, per-domain evaluation metrics over every rank, and the task-weighted headline numbers.

For each task (``model.tasks``) on the rows where it applies (its domains; its ``given`` label is 1):

- ``bce`` tasks: AUC (exact, tie-aware, ``distributed_auc``), logloss, normalized entropy, calibration (mean
  predicted probability / mean label: 1 is calibrated, < 1 under-predicts) and, when the true probability is
  known (synthetic data), the oracle's AUC and logloss and the gap ``oracle_auc - auc``;
- ``regression`` tasks: mean squared error and mean absolute error of the raw output.

Keys (a single task without a domain column keeps the short names only):

    auc, logloss, ne, calibration, oracle_auc, ...          task-weighted means over the bce tasks
    mse, mae                                                task-weighted means over the regression tasks
    auc/<task>, ... , num_examples/<task>                   per task, when there are several
    auc/<task>/<domain>, ...                                per task and domain, with a domain column

Domains are named by ``data.features.domain_names`` (``domain<id>`` when unnamed). A weighted mean skips
tasks whose value is NaN (a class absent from the evaluation set) and renormalises the remaining weights;
it is NaN only when every task's value is. Every rank must call this with the same tasks (it is a
collective: one all-reduce of the sums, one ``distributed_auc`` per bce task and domain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recscale.modules.tasks import Task
from recscale.sharding.process_group import host_group
from recscale.trainer.eval_metrics import _bce_sum, _entropy, _world, distributed_auc


@dataclass(frozen=True)
class _Group:
    """The rows of one task (optionally one domain) that a set of metrics is computed on."""

    task: int
    suffix: str
    rows: torch.Tensor
    """``[n]`` bool."""


def _num_domains(domain: torch.Tensor | None) -> int:
    """Domain ids 0..D-1 seen on any rank (0 without a domain column)."""
    if domain is None:
        return 0
    top = torch.tensor([int(domain.max()) if domain.numel() else -1], dtype=torch.int64)
    if _world(None) > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=host_group())
    return int(top) + 1


def _groups(
    tasks: Sequence[Task], masks: torch.Tensor, domain: torch.Tensor | None, domain_names: Sequence[str]
) -> list[_Group]:
    per_task = len(tasks) > 1
    out = []
    num_domains = _num_domains(domain)
    for t, task in enumerate(tasks):
        rows = masks[:, t] > 0
        name = f"/{task.name}" if per_task else ""
        out.append(_Group(t, name, rows))
        for d in range(num_domains):
            if task.domains and d not in task.domains:
                continue
            assert domain is not None
            label = domain_names[d] if d < len(domain_names) else f"domain{d}"
            out.append(_Group(t, f"/{task.name}/{label}", rows & (domain == d)))
    return out


def _sums(group: _Group, task: Task, logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor | None):
    """``[count, loss sums..., label sum]`` of one group, float64."""
    y = labels[group.rows, group.task].double()
    z = logits[group.rows, group.task].double()
    count = torch.tensor([float(y.numel())], dtype=torch.float64)
    if task.loss == "regression":
        err = z - y
        return torch.cat([count, err.square().sum().reshape(1), err.abs().sum().reshape(1), y.sum().reshape(1)])
    p = torch.sigmoid(z)
    parts = [count, _bce_sum(p, y).reshape(1), y.sum().reshape(1), p.sum().reshape(1)]
    if oracle is not None:
        parts.append(_bce_sum(oracle[group.rows, group.task].double(), y).reshape(1))
    return torch.cat(parts)


def _weighted(values: list[tuple[float, float]]) -> float:
    """Weighted mean of ``(value, weight)`` pairs, skipping NaN values (NaN when nothing is left)."""
    kept = [(v, w) for v, w in values if not math.isnan(v) and w > 0]
    total = sum(w for _, w in kept)
    return sum(v * w for v, w in kept) / total if total else math.nan


def task_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    tasks: Sequence[Task],
    oracle: torch.Tensor | None = None,
    domain: torch.Tensor | None = None,
    domain_names: Sequence[str] = (),
) -> dict[str, float]:
    """The metrics of the module docstring over every rank (a collective; padding already removed).

    Args:
        logits: ``[n, T]`` this rank's raw outputs.
        labels: ``[n, T]`` its labels.
        masks: ``[n, T]`` 1 where task t applies to the row (``TaskLoss.masks``).
        tasks: the T tasks.
        oracle: ``[n, T]`` true probabilities (synthetic data), or None.
        domain: ``[n]`` int64 domain ids, or None.
        domain_names: names of domain ids 0, 1, ...
    """
    logits, labels, masks = logits.detach().cpu(), labels.detach().cpu(), masks.detach().cpu()
    oracle = oracle.detach().cpu() if oracle is not None else None
    domain = domain.detach().cpu() if domain is not None else None
    groups = _groups(tasks, masks, domain, domain_names)
    sums = [_sums(g, tasks[g.task], logits, labels, oracle) for g in groups]
    sizes = [s.numel() for s in sums]
    totals = torch.cat([torch.tensor([float(labels.shape[0])], dtype=torch.float64), *sums])
    if _world(None) > 1:
        dist.all_reduce(totals, group=host_group())
    out: dict[str, float] = {"num_examples": float(totals[0])}
    heads: dict[str, list[tuple[float, float]]] = {}
    offset = 1
    for group, size in zip(groups, sizes):
        task = tasks[group.task]
        s = totals[offset : offset + size].tolist()
        offset += size
        values = _group_metrics(group, task, s, logits, labels, oracle)
        if len(tasks) > 1 and group.suffix.count("/") == 1:
            out[f"num_examples{group.suffix}"] = s[0]
        for key, value in values.items():
            out[f"{key}{group.suffix}"] = value
            if group.suffix.count("/") <= 1:
                heads.setdefault(key, []).append((value, task.weight))
    if len(tasks) > 1:
        for key, pairs in heads.items():
            out[key] = _weighted(pairs)
    return out


def _group_metrics(
    group: _Group, task: Task, s: list[float], logits: torch.Tensor, labels: torch.Tensor, oracle: torch.Tensor | None
) -> dict[str, float]:
    """One group's metrics from its reduced sums (and its AUCs, collectives)."""
    n = s[0]
    if task.loss == "regression":
        return {"mse": s[1] / n if n else math.nan, "mae": s[2] / n if n else math.nan}
    loss = s[1] / n if n else math.nan
    out = {
        "auc": distributed_auc(logits[group.rows, group.task], labels[group.rows, group.task]),
        "logloss": loss,
        "ne": loss / _entropy(s[2] / n) if n else math.nan,
        "calibration": s[3] / s[2] if s[2] else math.nan,
    }
    if oracle is not None:
        out["oracle_auc"] = distributed_auc(oracle[group.rows, group.task], labels[group.rows, group.task])
        out["oracle_logloss"] = s[4] / n if n else math.nan
        out["auc_gap"] = out["oracle_auc"] - out["auc"]
    return out


def format_metrics(r: dict[str, float]) -> str:
    """``" (task-weighted): auc ... | logloss ... | ne ..."`` for a console line (``mse`` for regression)."""
    parts = []
    if "auc" in r:
        text = f"auc {r['auc']:.4f}"
        if "oracle_auc" in r:
            text += f" (oracle {r['oracle_auc']:.4f}, gap {r['auc_gap']:.4f})"
        parts += [text, f"logloss {r['logloss']:.4f}", f"ne {r['ne']:.4f}"]
    if "mse" in r:
        parts.append(f"mse {r['mse']:.4g}")
    weighted = " (task-weighted)" if any(key.startswith("num_examples/") for key in r) else ""
    return f"{weighted}: " + " | ".join(parts)
