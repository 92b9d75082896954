"""The ``model.perturbation`` section: loss-balanced small perturbation regularisation (LSPR) and SCR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class PerturbationConfig:
    """Train on slightly perturbed inputs of the dense arch too (docs/regularisation.md).

    In training, each step adds Gaussian noise to the pooled embeddings (after the lookup) and to the dense
    features, and runs the dense arch on the clean and the perturbed rows in one call on 2B rows: the
    embedding lookups cost the same, the dense arch's forward and backward cost twice. Evaluation and
    serving see no noise. The loss formulas are our own choice (the paper's exact loss is not public).
    """

    kind: Literal["none", "lspr", "scr"] = "none"
    """``none``: off. ``lspr``: ``[L(clean) + weight · L(perturbed)] / (1 + weight)``, the task loss on both.
    ``scr`` (self-consistency baseline): ``L(clean) + consistency_weight · ½ (KL(p‖p̃) + KL(p̃‖p))``, the
    symmetric Bernoulli KL between the clean and the perturbed predicted probabilities."""
    weight: float = 0.5
    """λ of ``lspr``: weight of the perturbed rows' task loss (the sum is divided by 1 + λ, so the loss scale
    and the effective learning rate do not depend on λ)."""
    sigma_rel: float = 0.03
    """Noise size relative to each feature's scale: ``ẽ = e + sigma_rel · rms_f(e) · ε``, ε ~ N(0, I)."""
    consistency_weight: float = 1.0
    """μ of ``scr``: weight of the symmetric KL term."""
    rms_over: Literal["batch", "example"] = "batch"
    """Axes of ``rms_f`` (detached): ``batch`` = over the feature's embedding columns and the batch's real rows
    (padding left out), one scale per feature and step; ``example`` = over the feature's embedding columns of
    each row alone (a dense feature's scale is then its own absolute value)."""
    group_balance: bool = False
    """Weight each domain's perturbed term by the inverse of its share of the batch's real rows (rescaled so
    the total weight is unchanged: every domain present weighs the same). The groups are the values of
    ``data.features.domain``, which must be set."""
