"""The multi-task, multi-domain part of the planted model: each task's own truth, per domain.

With T tasks, D domains, field latents ``v_f`` (``PlantedModel._latent``) and ``g`` the candidate item's
category, two terms are added to task t's logit (both off by default):

    task_dom_t  = a_{t,d} + D_t[d, g]                          (each task's own domain shift)
    task_pair_t = sum_{f<h} A^t_fh <v_f[x_f], v_h[x_h]>       (each task's own field interactions)

``a``, ``D`` and ``A^t`` are drawn independently per task, so these terms are signal a task does not share
with the others (a shared bottom must carry all of them at once; gated experts can specialise). Like the
other terms they are centred and scaled per task to unit standard deviation on the pilot sample, so
``task_domain_scale`` / ``task_interaction_scale`` are their standard deviations in each task's logit.
"""

from __future__ import annotations

import numpy as np

from recscale.configs.schema import FeatureSchemaConfig, SyntheticConfig
from recscale.data.partition import seed_words

TASK_TERMS = ("task_dom", "task_pair")


class TaskTerms:
    """Draws and evaluates the per-task terms (module docstring)."""

    def __init__(self, synth: SyntheticConfig, num_tasks: int, num_fields: int) -> None:
        rng = np.random.default_rng(seed_words(synth.seed, 13))
        d, c = synth.num_domains, synth.num_clusters
        self.domain_bias = rng.standard_normal((num_tasks, d))
        self.domain_category = rng.standard_normal((num_tasks, d, c))
        self.pair_weights = np.triu(rng.standard_normal((num_tasks, num_fields, num_fields)), 1)
        self.scales = {"task_dom": synth.task_domain_scale, "task_pair": synth.task_interaction_scale}

    def raw(
        self, latents: list[np.ndarray], domain: np.ndarray | None, category: np.ndarray | None, n: int
    ) -> dict[str, np.ndarray]:
        """``task_dom`` and ``task_pair`` before scaling, each ``[n, T]`` (zeros when off or impossible)."""
        num_tasks = self.domain_bias.shape[0]
        dom = np.zeros((n, num_tasks))
        if self.scales["task_dom"] > 0 and domain is not None and category is not None:
            for t in range(num_tasks):
                dom[:, t] = self.domain_bias[t, domain] + self.domain_category[t, domain, category]
        pair = np.zeros((n, num_tasks))
        if self.scales["task_pair"] > 0:
            for f in range(len(latents)):
                for h in range(f + 1, len(latents)):
                    dot = np.einsum("nk,nk->n", latents[f], latents[h])
                    pair += dot[:, None] * self.pair_weights[:, f, h][None, :]
        return {"task_dom": dom, "task_pair": pair}


def planted_feature_masks(
    features: FeatureSchemaConfig, synth: SyntheticConfig
) -> tuple[list[int], list[int], list[set[int] | None]]:
    """Which inputs the logit reads (``useless_features``, ``task_features``; both off by default).

    Returns:
        The useless sparse field indices, the useless dense column indices, and per task the sparse
        fields whose id effects enter its id term (None: every field that is not useless).
    """
    sparse = [s.name for s in features.sparse]
    useless = set(synth.useless_features)
    fields = [f for f, name in enumerate(sparse) if name in useless]
    dense = [j for j, name in enumerate(features.dense) if name in useless]
    per_task: list[set[int] | None] = []
    for label in features.labels:
        listed = synth.task_features.get(label)
        per_task.append(None if listed is None else {sparse.index(n) for n in listed if n in sparse})
    return fields, dense, per_task


SECONDS_PER_DAY = 86_400


class Drift:
    """A daily random walk of the truth (``drift_per_day`` η; 0 = a stationary truth).

    On day τ (impression time // 1 day, counted from row 0) every task's logit gains

        drift_τ(x) = η · ( w_τ · z / √N  +  W_τ[c, g] ) / √2,   w_τ = ρ w_{τ-1} + ε_τ,  W_τ = ρ W_{τ-1} + E_τ

    with ε_τ ~ N(0, I_N) over the dense features z and E_τ ~ N(0, 1)^{C×C} over the user cluster c and item
    category g: the dense features' and the cluster x category effects wander, so a model trained on older
    data is further from today's truth. ρ is ``drift_memory``:

    - ρ = 1 (a random walk): w_0 = W_0 = 0, so day 0 (the pilot) is the stationary model and its biases and
      term scales hold there; the drift's standard deviation grows like η·√τ, so the truth's spread, and
      with it the base rates, move away from those of day 0 as the days pass.
    - ρ < 1 (mean-reverting, AR(1)): w_0 and W_0 are drawn from the walk's stationary law N(0, 1/(1 - ρ²)),
      so the drift's standard deviation is η/√(1 - ρ²) every day, the biases are solved with it included,
      and the base rates hold every day; days k apart have truths whose drifts correlate as ρ^k.
    """

    def __init__(self, synth: SyntheticConfig, num_dense: int) -> None:
        self.rate = synth.drift_per_day
        self.memory = synth.drift_memory
        self.seed = synth.seed
        self.num_dense = num_dense
        self.num_clusters = synth.num_clusters
        c = synth.num_clusters
        self._dense = np.zeros((1, num_dense))  # [days, N] the walks, day 0 first
        self._cells = np.zeros((1, c, c))
        if self.memory < 1.0:  # start from the stationary law, from its own seed
            rng = np.random.default_rng(seed_words(self.seed, 17, 0))
            spread = 1.0 / np.sqrt(1.0 - self.memory**2)
            self._dense = spread * rng.standard_normal((1, num_dense))
            self._cells = spread * rng.standard_normal((1, c, c))

    def _extend(self, day: int) -> None:
        """Grow the walks up to ``day`` (each day's step from its own seed)."""
        rho = self.memory
        while len(self._dense) <= day:
            rng = np.random.default_rng(seed_words(self.seed, 17, len(self._dense)))
            step = self._dense[-1] * rho if rho < 1.0 else self._dense[-1]  # ρ = 1: the walk, bit for bit
            self._dense = np.vstack([self._dense, step + rng.standard_normal(self.num_dense)])
            c = self.num_clusters
            cells = self._cells[-1] * rho if rho < 1.0 else self._cells[-1]
            self._cells = np.concatenate([self._cells, (cells + rng.standard_normal((c, c)))[None]])

    def term(self, day: np.ndarray, dense: np.ndarray, cluster: np.ndarray, category: np.ndarray) -> np.ndarray:
        """``[n]`` the drift of each row's logit (zeros when η = 0)."""
        if self.rate <= 0:
            return np.zeros(len(day))
        self._extend(int(day.max()) if len(day) else 0)
        walk = np.einsum("nd,nd->n", self._dense[day], dense) / max(np.sqrt(self.num_dense), 1.0)
        walk = walk + self._cells[day, cluster, category]
        return self.rate * walk / np.sqrt(2.0)
