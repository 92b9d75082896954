"""LSPR / SCR (``model.perturbation``): losses against hand computations, noise size, eval, FLOPs, tracing."""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch.distributions import Bernoulli, kl_divergence
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs import JobConfig
from recscale.configs.capabilities import capability_problems
from recscale.configs.schema import PerturbationConfig
from recscale.configs.validate import collect_problems
from recscale.modules.build import build_model
from recscale.modules.flops import total
from recscale.modules.perturbation import Perturbation, feature_rms
from recscale.modules.registry import MODEL_SPECS
from recscale.trainer.batch_flops import BatchFlops
from tests.batches import random_batch, tiny_config

B = 16
SIGMA = 0.1


def _config(kind: str, group_balance: bool = False, **extra: object) -> JobConfig:
    perturbation = {"kind": kind, "sigma_rel": SIGMA, "weight": 0.5, "consistency_weight": 2.0}
    perturbation |= {"group_balance": group_balance, **extra}
    data = {"features": {"labels": ["label"], "dense": ["d0", "d1", "d2"], "domain": "dom"}}
    data["features"]["sparse"] = [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)]
    return tiny_config(model={"perturbation": perturbation}, data=data)


def _batch(cfg: JobConfig):  # type: ignore[no-untyped-def]
    """A batch with 3 domains of 9 / 4 / 1 real rows and 2 padding rows (weight 0)."""
    batch = random_batch(cfg, B, seed=3)
    batch.domain = torch.tensor([0] * 9 + [1] * 4 + [2] + [0, 1])
    batch.weights = torch.cat([torch.ones(B - 2), torch.zeros(2)])
    return batch


def _by_hand(model, batch, seed: int):  # type: ignore[no-untyped-def]
    """Clean and perturbed logits with the noise drawn as the model draws it (pooled, then dense)."""
    pooled = model.sparse(batch.sparse)
    real = batch.weights > 0
    torch.manual_seed(seed)
    eps_pooled, eps_dense = torch.randn_like(pooled), torch.randn_like(batch.dense)
    dims = [8, 8, 8, 8]
    scale = torch.cat([pooled[real, 8 * f : 8 * (f + 1)].square().mean().sqrt().repeat(d) for f, d in enumerate(dims)])
    dense_scale = batch.dense[real].square().mean(dim=0).sqrt()
    noisy_pooled = pooled + SIGMA * scale.detach() * eps_pooled
    noisy_dense = batch.dense + SIGMA * dense_scale * eps_dense
    return model.dense(batch.dense, pooled)[0], model.dense(noisy_dense, noisy_pooled)[0]


def _balance(batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``n / (G n_g)`` on real rows: 14 real rows, 3 domains of 9 / 4 / 1."""
    share = {0: 9, 1: 4, 2: 1}
    r = torch.tensor([14 / (3 * share[int(d)]) for d in batch.domain])
    return r * (batch.weights > 0)


@pytest.mark.parametrize("group_balance", [False, True])
def test_lspr_loss_is_the_balanced_sum_of_clean_and_perturbed_bce(group_balance: bool) -> None:
    cfg = _config("lspr", group_balance)
    model = build_model(cfg, sparse_device="cpu").rec_model().train()
    batch = _batch(cfg)
    torch.manual_seed(11)
    loss, (_, logits, *_) = model(batch)
    clean, perturbed = _by_hand(model, batch, seed=11)
    r = _balance(batch) if group_balance else torch.ones(B)
    bce = F.binary_cross_entropy_with_logits
    clean_loss = (bce(clean, batch.labels, reduction="none")[:, 0] * batch.weights).sum() / B
    perturbed_loss = (bce(perturbed, batch.labels, reduction="none")[:, 0] * batch.weights * r).sum() / B
    assert torch.allclose(loss, (clean_loss + 0.5 * perturbed_loss) / 1.5, atol=1e-6)
    assert torch.allclose(logits, clean, atol=1e-6)  # metrics read the clean half


@pytest.mark.parametrize("group_balance", [False, True])
def test_scr_loss_adds_the_symmetric_bernoulli_kl(group_balance: bool) -> None:
    cfg = _config("scr", group_balance)
    model = build_model(cfg, sparse_device="cpu").rec_model().train()
    batch = _batch(cfg)
    torch.manual_seed(5)
    loss, _ = model(batch)
    clean, perturbed = _by_hand(model, batch, seed=5)
    p, q = Bernoulli(logits=clean[:, 0]), Bernoulli(logits=perturbed[:, 0])
    symmetric = 0.5 * (kl_divergence(p, q) + kl_divergence(q, p))
    r = _balance(batch) if group_balance else torch.ones(B)
    bce = F.binary_cross_entropy_with_logits(clean, batch.labels, reduction="none")[:, 0]
    expected = (bce * batch.weights).sum() / B + 2.0 * (symmetric * batch.weights * r).sum() / B
    assert torch.allclose(loss, expected, atol=1e-6)


def test_noise_size_is_sigma_rel_times_each_features_rms() -> None:
    g = torch.Generator().manual_seed(0)
    dims = [4, 16, 8]
    scales = torch.cat([torch.full((d,), s) for d, s in zip(dims, [0.01, 1.0, 30.0])])
    x = torch.randn(20_000, sum(dims), generator=g) * scales
    real = torch.ones(x.shape[0])
    perturbation = Perturbation(PerturbationConfig(kind="lspr", sigma_rel=0.03), dims)
    torch.manual_seed(1)
    relative = (perturbation.perturbed(x, real, pooled=True) - x) / scales  # rms_f = the feature's scale
    per_feature = [relative[:, a : a + d] for a, d in zip([0, 4, 20], dims)]
    for part in per_feature:
        assert abs(float(part.std()) / 0.03 - 1) < 0.02 and abs(float(part.mean())) < 0.002
    # per example: each row's own rms over the feature's columns
    rows = feature_rms(x[:3], real[:3], "example", perturbation.column_feature, perturbation.feature_bounds)
    assert torch.allclose(rows[:, 5], x[:3, 4:20].square().mean(dim=1).sqrt())


def test_evaluation_sees_no_perturbation() -> None:
    cfg = _config("lspr")
    plain = build_model(_config("none"), sparse_device="cpu").rec_model().eval()
    model = build_model(cfg, sparse_device="cpu").rec_model().eval()  # the same seed: the same weights
    batch = _batch(cfg)
    loss, (_, logits, *_) = model(batch)
    plain_loss, (_, plain_logits, *_) = plain(batch)
    assert torch.equal(loss, plain_loss) and torch.equal(logits, plain_logits)


@pytest.mark.parametrize("kind", ["lspr", "scr"])
def test_flops_count_the_dense_arch_twice_like_flop_counter_mode(kind: str) -> None:
    cfg = _config(kind)
    built = build_model(cfg, sparse_device="cpu")
    model = built.rec_model().train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model(random_batch(cfg, 32, seed=0))
        loss.backward()
    analytic = total(BatchFlops.for_job(cfg, built.dense).breakdown())
    assert counter.get_total_flops() / 32 == analytic.train
    assert analytic.train == 2 * total(built.dense.flops()).train


def test_traces_with_the_torchrec_tracer_and_matches_eager() -> None:
    from torchrec.distributed.train_pipeline.tracing import Tracer

    cfg = _config("lspr", group_balance=True)
    model = build_model(cfg, sparse_device="cpu").rec_model().train()
    traced = torch.fx.GraphModule(model, Tracer(leaf_modules=["dense"]).trace(model))
    batch = _batch(cfg)
    torch.manual_seed(2)
    expected = model(batch)[0]
    torch.manual_seed(2)
    assert torch.equal(traced(batch)[0], expected)


def test_config_errors_name_the_key() -> None:
    problems = collect_problems(tiny_config(model={"perturbation": {"kind": "lspr", "group_balance": True}}))
    assert any(p.startswith("model.perturbation.group_balance:") for p in problems)
    problems = collect_problems(_config("scr", consistency_weight=0.0, sigma_rel=-1.0))
    keys = {p.split(":")[0] for p in problems}
    assert keys >= {"model.perturbation.consistency_weight", "model.perturbation.sigma_rel"}
    cfg = tiny_config(model={"arch": "kunlun", "perturbation": {"kind": "lspr"}})
    cfg.data.features.sequences = [object()]  # type: ignore[list-item]
    caps = {name: spec.supports for name, spec in MODEL_SPECS.items()}
    assert any(p.startswith("model.perturbation.kind:") for p in capability_problems(cfg, caps))
