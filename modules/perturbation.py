"""Loss-balanced small perturbation regularisation (LSPR) and the self-consistency baseline (SCR).

In training, the dense arch sees every batch twice, in ONE call on 2B rows ``[clean; perturbed]``: the
pooled embeddings (after the lookup, so the embedding cost is unchanged) and the dense features get
Gaussian noise relative to each feature's scale,

    ẽ = e + σ_rel · rms_f(e) · ε,   ε ~ N(0, I) drawn each step from torch's global RNG (checkpointed)

and the loss is (``L`` the model's task loss, ``z`` / ``z̃`` the clean / perturbed logits, ``p = σ(z)``):

    lspr:  [L(z) + λ · L(z̃)] / (1 + λ)
    scr:   L(z) + μ · Σ_t w_t Σ_b ω_b r_b m[b,t] · ½ (KL(p‖p̃) + KL(p̃‖p)) / B,   ½ (KL + KL) = ½ (p - p̃)(z - z̃)

``rms_f`` is detached: over the feature's embedding columns and the batch's real rows (``rms_over:
batch``), or over each row's columns alone (``example``). With ``group_balance`` the perturbed term's row
weights get ``r_b = n / (G · n_g(b))``: ``n`` real rows, ``G`` domains present, ``n_g`` real rows of the
row's domain, so every domain's perturbed term weighs the same and the total weight stays ``n``.
Without it ``r_b = 1``. These formulas are our choice: the paper's exact loss is not public.

One call, not two: a DDP module (or a DeepSpeed engine) called twice before one backward breaks its
gradient reducer. Batch norm in the dense arch therefore normalises over both halves together. Every
step stays sync-free and fx-traceable (no Python branch on tensor values): TorchRec's pipeline traces
``RecModel.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recscale.configs.schema import PerturbationConfig
from recscale.modules.tasks import TaskLoss


def dense_passes(cfg: PerturbationConfig) -> int:
    """How many times a training step runs the dense arch per example: 2 with ``lspr`` / ``scr``, else 1."""
    return 1 if cfg.kind == "none" else 2


@dataclass
class DoubledInputs:
    """What the dense arch reads for ``[clean; perturbed]`` rows (the attributes ``RecModel._dense`` reads)."""

    dense: torch.Tensor
    """``[2B, N]`` dense features, the second half with noise."""
    pooled: torch.Tensor
    """``[2B, ΣD]`` pooled embeddings, the second half with noise."""
    teacher: torch.Tensor | None
    """``[2B, T]`` the teacher's logits twice (not perturbed), or None when the model does not read them."""
    domain: torch.Tensor | None
    """``[2B]`` the domain twice, or None when the dense arch does not read it."""


def feature_rms(
    x_BP: torch.Tensor,
    real_B: torch.Tensor,
    over: str,
    column_feature_P: torch.Tensor | None = None,
    bounds_F1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Detached root-mean-square of each feature's columns, broadcast back to ``x``'s columns.

    Args:
        x_BP: ``[B, P]`` features laid side by side in contiguous blocks of columns.
        real_B: ``[B]`` 1 for real rows, 0 for padding (left out of the ``batch`` mean).
        over: ``batch``: one rms per feature over its columns and the real rows -> ``[P]``; ``example``: one
            per feature and row over its columns -> ``[B, P]``.
        column_feature_P: ``[P]`` int64 feature index of each column; None = every column its own feature.
        bounds_F1: ``[F + 1]`` int64 first column of each feature, then P (with ``column_feature_P``).

    Block sums are differences of a cumulative sum over the columns (deterministic on every device,
    unlike scatter-adds).
    """
    sq_BP = x_BP.detach().float().square()
    if over == "batch":
        sq_BP = (sq_BP * real_B.unsqueeze(1)).sum(dim=0, keepdim=True) / real_B.sum().clamp_min(1.0)  # [1, P]
    if column_feature_P is None or bounds_F1 is None:  # one column per feature (the dense features)
        return sq_BP.sqrt().squeeze(0) if over == "batch" else sq_BP.sqrt()
    cumulative = torch.cat([sq_BP.new_zeros(sq_BP.shape[0], 1), sq_BP.cumsum(dim=1)], dim=1)  # [B or 1, P + 1]
    sums_BF = cumulative[:, bounds_F1[1:]] - cumulative[:, bounds_F1[:-1]]
    rms_BF = (sums_BF.clamp_min(0.0) / (bounds_F1[1:] - bounds_F1[:-1]).to(sums_BF.dtype)).sqrt()
    rms_BP = rms_BF[:, column_feature_P]
    return rms_BP.squeeze(0) if over == "batch" else rms_BP


def group_balance_weights(domain_B: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """``[B]`` ``r_b = n / (G · n_g(b))`` on real rows, 0 on padding (module docstring); no host read.

    ``n_g`` counts the real rows of each row's domain by sorting (no bound on the domain ids needed).
    """
    order = domain_B.argsort()
    sorted_B = domain_B[order].contiguous()
    cumulative = torch.cat([real_B.new_zeros(1), real_B[order].cumsum(0)])
    low = torch.searchsorted(sorted_B, domain_B, right=False)
    high = torch.searchsorted(sorted_B, domain_B, right=True)
    in_group_B = (cumulative[high] - cumulative[low]).clamp_min(1.0)
    groups = (real_B / in_group_B).sum().clamp_min(1.0)
    return real_B * real_B.sum() / (groups * in_group_B)


def symmetric_bernoulli_kl(logits_BT: torch.Tensor, other_BT: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` ½ (KL(Bern(σ(z)) ‖ Bern(σ(z̃))) + KL(Bern(σ(z̃)) ‖ Bern(σ(z)))) = ½ (σ(z) - σ(z̃)) (z - z̃)."""
    z, other = logits_BT.float(), other_BT.float()
    return 0.5 * (torch.sigmoid(z) - torch.sigmoid(other)) * (z - other)


class Perturbation(nn.Module):
    """The noise, the doubled inputs and the combined loss of ``model.perturbation`` (no parameters).

    Args:
        cfg: ``model.perturbation`` (``kind`` must not be ``none``).
        pooled_dims: embedding dim of each pooled feature, in the sparse arch's output order.
    """

    def __init__(self, cfg: PerturbationConfig, pooled_dims: Sequence[int]) -> None:
        super().__init__()
        if cfg.kind == "none":
            raise ValueError("model.perturbation.kind: expected lspr or scr for a Perturbation, got none")
        self.kind = cfg.kind
        self.weight = cfg.weight
        self.sigma_rel = cfg.sigma_rel
        self.consistency_weight = cfg.consistency_weight
        self.rms_over = cfg.rms_over
        self.group_balance = cfg.group_balance
        column_feature = [f for f, dim in enumerate(pooled_dims) for _ in range(dim)]
        self.register_buffer("column_feature", torch.tensor(column_feature, dtype=torch.int64), persistent=False)
        bounds = [sum(pooled_dims[:f]) for f in range(len(pooled_dims) + 1)]
        self.register_buffer("feature_bounds", torch.tensor(bounds, dtype=torch.int64), persistent=False)

    def perturbed(self, x_BP: torch.Tensor, real_B: torch.Tensor, pooled: bool) -> torch.Tensor:
        """``x + σ_rel · rms_f(x) · ε`` of pooled embeddings (blocks of columns) or dense features (one column each)."""
        if pooled:
            scale = feature_rms(x_BP, real_B, self.rms_over, self.column_feature, self.feature_bounds)
        else:
            scale = feature_rms(x_BP, real_B, self.rms_over)
        noise = torch.randn_like(x_BP, dtype=torch.float32)
        return (x_BP.float() + self.sigma_rel * scale * noise).to(x_BP.dtype)

    def doubled_inputs(self, batch: Any, pooled_BP: torch.Tensor, teacher: bool, domain: bool) -> DoubledInputs:
        """``[clean; perturbed]`` inputs of the dense arch; the teacher's logits and the domain repeated when read."""
        real_B = (batch.weights > 0).to(torch.float32)
        noisy_pooled = self.perturbed(pooled_BP, real_B, pooled=True)
        noisy_dense = self.perturbed(batch.dense, real_B, pooled=False)
        return DoubledInputs(
            dense=torch.cat([batch.dense, noisy_dense]),
            pooled=torch.cat([pooled_BP, noisy_pooled]),
            teacher=torch.cat([batch.teacher, batch.teacher]) if teacher else None,
            domain=torch.cat([batch.domain, batch.domain]) if domain else None,
        )

    def row_weights(self, weights_B: torch.Tensor, domain_B: torch.Tensor | None) -> torch.Tensor:
        """``[B]`` the perturbed term's example weights ``ω_b r_b`` (``r = 1`` without ``group_balance``)."""
        if not self.group_balance:
            return weights_B
        assert domain_B is not None, "model.perturbation.group_balance needs the domain column"
        return weights_B * group_balance_weights(domain_B, (weights_B > 0).to(weights_B.dtype))

    def balanced(self, clean_loss: torch.Tensor, perturbed_loss: torch.Tensor) -> torch.Tensor:
        """LSPR: ``[L(clean) + λ · L(perturbed)] / (1 + λ)``."""
        return (clean_loss + self.weight * perturbed_loss) / (1.0 + self.weight)

    def consistency(
        self,
        clean_BT: torch.Tensor,
        perturbed_BT: torch.Tensor,
        row_weights_B: torch.Tensor,
        labels_BT: torch.Tensor,
        domain_B: torch.Tensor | None,
        task_loss: TaskLoss | None,
    ) -> torch.Tensor:
        """SCR: ``μ · Σ_t w_t Σ_b ω_b r_b m[b,t] ½ (KL + KL)[b,t] / B`` over the ``bce`` tasks' predictions.

        ``m`` are the tasks' row masks (domains, ``given``), ``w_t`` their normalised weights; regression tasks
        are left out; the sum is divided by the batch size B like the tasks' ``batch`` normalisation.
        """
        per_BT = symmetric_bernoulli_kl(clean_BT, perturbed_BT) * row_weights_B.unsqueeze(1)
        if task_loss is None:
            per_task_T = per_BT.sum(dim=0) / (per_BT.shape[0] * per_BT.shape[1])
        else:
            if task_loss.masked:
                per_BT = per_BT * task_loss.masks(labels_BT, domain_B)
            per_task_T = per_BT.sum(dim=0) * (task_loss.weights * task_loss.is_bce) / per_BT.shape[0]
        return self.consistency_weight * per_task_T.sum()
