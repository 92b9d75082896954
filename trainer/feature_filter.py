"""Lattice's Filter: permutation importance per feature and task, Pareto fronts, and the two selections.

With M candidate features (the sparse features, then the dense columns) and N tasks:

- ``F [M, N]``: ``F[i, j]`` is how much task j's normalized entropy rises when feature i is permuted
  across the rows of every evaluation batch (``permutation_importance``; regression tasks: the relative
  rise of the MSE), averaged over ``repeats`` seeded permutations and clipped at 0.
- Feature k dominates feature i when ``F[k, j] >= F[i, j]`` for every task j and ``>`` for some j.
  ``pareto_fronts`` peels the successive non-dominated sets (fast non-dominated sort).
- ``filter_select`` keeps whole fronts while they fit the budget T and fills the rest uniformly at random
  (seeded) from the first front that does not fit: no task's best features are traded away for another's.
- ``weighted_top`` is the weighted-sum baseline: the T features of highest ``F @ weights``.

The importance pass evaluates the trained model as it is (no refit between fronts); the selection is
meant to be retrained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs.schema import FeatureSchemaConfig, TaskConfig
from recscale.data.batch import Batch

log = logging.getLogger("recscale")


@dataclass(frozen=True)
class Candidate:
    """One feature the Filter may keep or drop."""

    name: str
    kind: Literal["sparse", "dense"]
    column: int = -1
    """Column of ``Batch.dense`` (dense features only)."""


def candidates(features: FeatureSchemaConfig) -> list[Candidate]:
    """The sparse features, then the dense columns (event sequences and the domain column are not candidates)."""
    out = [Candidate(s.name, "sparse") for s in features.sparse]
    return out + [Candidate(name, "dense", j) for j, name in enumerate(features.dense)]


# ------------------------------------------------------------------------------------------ permuting


def row_permutation(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A row permutation ``perm [B]`` (int64; row r takes row ``perm[r]``'s value) from a weights ``[B]``.

    Real rows (weight > 0) are shuffled among themselves; padding rows stay where they are.
    """
    perm = torch.arange(weights.shape[0])
    real = torch.nonzero(weights.cpu() > 0).flatten()
    perm[real] = real[torch.randperm(len(real), generator=generator)]
    return perm


def permute_sparse(kjt: KeyedJaggedTensor, key: str, perm: torch.Tensor) -> KeyedJaggedTensor:
    """``kjt`` with key ``key``'s bags permuted as whole rows (lengths, values and weights move together).

    Args:
        kjt: key-major KJT with ``stride() == B`` (``lengths [F * B]``).
        key: the feature to permute.
        perm: ``[B]``; row r of the result holds row ``perm[r]``'s bag.
    """
    b = kjt.stride()
    k = kjt.keys().index(key)
    lengths = kjt.lengths()
    offsets = kjt.offsets()
    seg = slice(k * b, (k + 1) * b)
    perm = perm.to(lengths.device)
    new_lengths = lengths[seg][perm].long()
    starts = offsets[seg][perm].long()
    total = int(new_lengths.sum())
    first = torch.cumsum(new_lengths, 0) - new_lengths  # where each new bag starts in the segment
    within = torch.arange(total, device=lengths.device) - torch.repeat_interleave(first, new_lengths)
    index = torch.repeat_interleave(starts, new_lengths) + within
    lo = int(offsets[k * b])
    values = kjt.values().clone()
    values[lo : lo + total] = kjt.values()[index]
    out_lengths = lengths.clone()
    out_lengths[seg] = new_lengths.to(lengths.dtype)
    weights = kjt.weights_or_none()
    if weights is not None:
        weights = weights.clone()
        weights[lo : lo + total] = kjt.weights()[index]
    return KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=out_lengths, weights=weights, stride=b)


def permute_feature(batch: Batch, candidate: Candidate, perm: torch.Tensor) -> Batch:
    """A copy of ``batch`` with one feature permuted across rows (``perm [B]``); everything else is shared."""
    if candidate.kind == "dense":
        dense = batch.dense.clone()
        dense[:, candidate.column] = batch.dense[perm.to(dense.device), candidate.column]
        return replace(batch, dense=dense)
    return replace(batch, sparse=permute_sparse(batch.sparse, candidate.name, perm))


# ------------------------------------------------------------------------------------------ importance


@dataclass
class Importance:
    """Permutation importance of M features for N tasks (``F`` of the module docstring)."""

    features: list[str]
    tasks: list[str]
    metrics: list[str]
    """Per task, the metric key the importance is the rise of (``ne/<task>``, ``ne``, ``mse/<task>``...)."""
    intact: list[float]
    """Per task, the metric of the intact data."""
    mean: np.ndarray
    """``[M, N]`` mean rise over the repeats, unclipped."""
    std: np.ndarray
    """``[M, N]`` standard deviation of the rise over the repeats (0 with one repeat)."""
    repeats: int
    seed: int

    @property
    def values(self) -> np.ndarray:
        """``[M, N]`` the importance the selections use: ``mean`` clipped at 0."""
        return np.clip(self.mean, 0.0, None)


def metric_keys(tasks: Sequence[TaskConfig]) -> list[str]:
    """The ``evaluate`` key each task's importance reads: ``ne`` (bce) or ``mse`` (regression), per task."""
    keys = []
    for t in tasks:
        metric = "mse" if t.loss == "regression" else "ne"
        keys.append(f"{metric}/{t.name}" if len(tasks) > 1 else metric)
    return keys


def _rise(metrics: dict[str, float], intact: dict[str, float], key: str) -> float:
    """``ne`` rises as they are; ``mse`` rises relative to the intact MSE (so tasks are on one scale)."""
    value = metrics[key] - intact[key]
    if key.startswith("mse") and intact[key] > 0:
        value /= intact[key]
    return 0.0 if np.isnan(value) else float(value)


def permutation_seed(seed: int, feature: int, repeat: int) -> int:
    """The torch seed of one (feature, repeat) permutation stream."""
    return int(np.random.SeedSequence([seed, feature, repeat]).generate_state(1, np.uint64)[0] >> 1)


def permutation_importance(
    evaluate: Callable[[Iterable[Batch]], dict[str, float]],
    batches: Sequence[Batch],
    features: Sequence[Candidate],
    tasks: Sequence[TaskConfig],
    repeats: int = 3,
    seed: int = 0,
    share: Callable[[Batch], Batch] | None = None,
) -> Importance:
    """``F [M, N]``: each feature's permutation importance for each task (module docstring).

    Args:
        evaluate: metrics of the model on some batches (``trainer.evaluate.evaluate`` bound to a model);
            called ``1 + M * repeats`` times, with the same number of batches every time (a collective).
        batches: the evaluation batches, held in memory: whole batches (every rank holds the same ones when
            ``share`` is given), or this rank's own.
        features: the candidates.
        tasks: the model's tasks, in logit order.
        repeats: permutations per feature (each feature's r-th permutation is seeded by ``(seed, i, r)``).
        seed: base seed.
        share: this rank's rows of a whole batch (``Batch.rows``), or None to evaluate ``batches`` as they
            are. A feature is permuted across the whole batch, then shared out, so the permutation is the
            same on any number of ranks.
    """
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: expected at least 1")
    keys = metric_keys(tasks)
    mine = share or (lambda batch: batch)
    intact = evaluate([mine(b) for b in batches])
    rises = np.zeros((len(features), repeats, len(tasks)))
    for i, feature in enumerate(features):
        for r in range(repeats):
            generator = torch.Generator().manual_seed(permutation_seed(seed, i, r))
            permuted = [mine(permute_feature(b, feature, row_permutation(b.weights, generator))) for b in batches]
            metrics = evaluate(permuted)
            rises[i, r] = [_rise(metrics, intact, key) for key in keys]
        shown = " ".join(f"{t.name} {v:+.5f}" for t, v in zip(tasks, rises[i].mean(axis=0)))
        log.info("feature %d/%d %s: %s", i + 1, len(features), feature.name, shown)
    return Importance(
        features=[f.name for f in features],
        tasks=[t.name for t in tasks],
        metrics=keys,
        intact=[float(intact[k]) for k in keys],
        mean=rises.mean(axis=1),
        std=rises.std(axis=1, ddof=1) if repeats > 1 else np.zeros((len(features), len(tasks))),
        repeats=repeats,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------ selections


def dominance(F: np.ndarray, block: int = 256) -> np.ndarray:
    """``D [M, M]`` bool: ``D[k, i]`` when feature k dominates feature i (rows of ``F [M, N]``)."""
    F = np.asarray(F, dtype=np.float64)
    out = np.zeros((len(F), len(F)), dtype=bool)
    for lo in range(0, len(F), block):
        a = F[lo : lo + block, None, :]
        out[lo : lo + block] = (a >= F[None]).all(-1) & (a > F[None]).any(-1)
    return out


def pareto_fronts(F: np.ndarray) -> list[list[int]]:
    """Successive Pareto fronts of the rows of ``F [M, N]`` (larger is better), each in ascending order.

    Front 0 holds the rows no row dominates; front k those no row outside fronts 0..k-1 dominates.
    Equal rows never dominate each other, so they share a front.
    """
    dominated_by = dominance(F)
    count = dominated_by.sum(axis=0)  # how many remaining rows dominate each row
    done = np.zeros(len(count), dtype=bool)
    fronts = []
    while not done.all():
        front = np.flatnonzero((count == 0) & ~done)
        fronts.append(front.tolist())
        done[front] = True
        count = count - dominated_by[front].sum(axis=0)
    return fronts


def apply_floor(F: np.ndarray, floor: float) -> np.ndarray:
    """``F [M, N]`` with entries below ``floor`` x their task's largest entry set to 0 (``floor`` 0: unchanged).

    Permutation noise leaves tiny positive values on features a task does not use; a feature that is
    useless everywhere but 1e-5 above 0 on one task is then dominated only by the features that beat it
    on that task and can share a front with real features. Entries under the floor tie at 0 instead.
    """
    F = np.asarray(F, dtype=np.float64)
    if floor <= 0:
        return F
    if floor >= 1:
        raise ValueError(f"--floor {floor}: expected a fraction in [0, 1)")
    return np.where(F >= floor * F.max(axis=0, keepdims=True), F, 0.0)


def _check_budget(budget: int, num_features: int) -> None:
    if not 0 < budget <= num_features:
        raise ValueError(f"--budget {budget}: expected 1..{num_features} (the number of candidate features)")


def filter_select(F: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    """The Filter's ``budget`` rows of ``F [M, N]``: whole fronts while they fit, then a uniform sample.

    Returns:
        Row indices, front by front (ascending within a front; the sampled rows last, ascending).
    """
    _check_budget(budget, len(F))
    selected: list[int] = []
    for front in pareto_fronts(F):
        room = budget - len(selected)
        if len(front) <= room:
            selected += front
        else:
            sampled = np.random.default_rng(seed).choice(front, size=room, replace=False)
            selected += sorted(int(i) for i in sampled)
        if len(selected) == budget:
            break
    return selected


def weighted_top(F: np.ndarray, weights: Sequence[float], budget: int) -> list[int]:
    """The ``budget`` rows of ``F [M, N]`` with the highest ``F @ weights`` (``weights [N]``; ties: lower index)."""
    _check_budget(budget, len(F))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (F.shape[1],):
        raise ValueError(f"--weights: expected {F.shape[1]} task weights, got {len(w)}")
    scores = np.asarray(F, dtype=np.float64) @ w
    return [int(i) for i in np.argsort(-scores, kind="stable")[:budget]]


def summary(
    importance: Importance, budget: int, weights: Sequence[float], seed: int, floor: float = 0.0
) -> dict[str, Any]:
    """What ``recscale features select`` reports: the matrix, the fronts and both selections, by name.

    ``value`` is the entry both selections use (the mean rise clipped at 0, then ``apply_floor``).
    """
    F = apply_floor(importance.values, floor)
    names = importance.features
    kept = filter_select(F, budget, seed)
    baseline = weighted_top(F, weights, budget)
    return {
        "tasks": importance.tasks,
        "metrics": importance.metrics,
        "intact": dict(zip(importance.tasks, importance.intact)),
        "repeats": importance.repeats,
        "seed": importance.seed,
        "budget": budget,
        "floor": floor,
        "weights": dict(zip(importance.tasks, (float(w) for w in weights))),
        "importance": {
            n: {
                t: {"value": float(F[i, j]), "mean": float(importance.mean[i, j]), "std": float(importance.std[i, j])}
                for j, t in enumerate(importance.tasks)
            }
            for i, n in enumerate(names)
        },
        "fronts": [[names[i] for i in front] for front in pareto_fronts(F)],
        "filter": {"kept": [names[i] for i in kept], "dropped": [n for i, n in enumerate(names) if i not in kept]},
        "weighted_sum": {
            "kept": [names[i] for i in baseline],
            "dropped": [n for i, n in enumerate(names) if i not in baseline],
        },
    }
