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

from recscale.configs.schema import SyntheticConfig
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
