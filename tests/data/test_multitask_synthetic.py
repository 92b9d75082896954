"""The multi-task, multi-domain generator: conversions after clicks, delays, per-task and per-domain truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from recscale.configs import load_config
from recscale.data import generate_synthetic
from recscale.data.planted import PlantedModel
from recscale.data.synthetic import START_TIME, auc


def _config(*overrides: str):
    return load_config(
        "multitask_synthetic", ["data.synthetic.num_train=4000", "data.synthetic.num_valid=40000", *overrides]
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cfg = _config()
    out = tmp_path_factory.mktemp("mt") / "data"
    claims = generate_synthetic(cfg.data, cfg.embeddings, out)
    return cfg, pq.read_table(out / "valid"), claims


def test_a_conversion_is_observed_only_after_a_click(generated):
    _, t, _ = generated
    click, purchase = t.column("click").to_numpy(), t.column("purchase").to_numpy()
    p = np.stack(t.column("true_prob").to_numpy(zero_copy_only=False))
    assert purchase.sum() > 100
    assert np.all(click[purchase == 1] == 1)
    clicked = click == 1
    # on clicked rows the conversion label is Bernoulli(p(conversion | click)): its rate matches the mean within 3 sigma
    expected = p[clicked, 1].mean()
    sigma = np.sqrt((p[clicked, 1] * (1 - p[clicked, 1])).sum()) / clicked.sum()
    assert abs(purchase[clicked].mean() - expected) < 3 * sigma


def test_conversion_delays_follow_the_exponential_law(generated):
    cfg, t, _ = generated
    delay = t.column("conversion_delay_s")
    purchase = t.column("purchase").to_numpy()
    assert np.array_equal(delay.is_valid().to_numpy(zero_copy_only=False), purchase == 1)  # null without one
    values = delay.drop_null().to_numpy()
    mean = cfg.data.synthetic.conversion_delay_mean_s
    assert stats.kstest(values, "expon", args=(0, mean)).pvalue > 0.01
    times = t.column("impression_time").to_numpy()  # valid/ continues the timeline after train/
    s = cfg.data.synthetic
    assert times[0] == START_TIME + s.num_train * s.seconds_per_row and np.all(np.diff(times) == s.seconds_per_row)


def test_claims_give_each_task_and_domain_its_oracle_auc(generated):
    _, t, claims = generated
    click, purchase = t.column("click").to_numpy(), t.column("purchase").to_numpy()
    domain = t.column("surface").to_numpy()
    p = np.stack(t.column("true_prob").to_numpy(zero_copy_only=False))
    by_task = claims["oracle_auc_valid_by_task"]
    assert by_task["click"]["all"] == pytest.approx(auc(click, p[:, 0]))
    clicked = click == 1
    assert by_task["purchase"]["all"] == pytest.approx(auc(purchase[clicked], p[clicked, 1]))
    assert claims["oracle_auc_valid"]["purchase"] == by_task["purchase"]["all"]
    for d in range(3):
        rows = clicked & (domain == d)
        assert by_task["purchase"][f"domain{d}"] == pytest.approx(auc(purchase[rows], p[rows, 1]))
        assert 0.6 < by_task["click"][f"domain{d}"] < 0.95


def _task_logit_correlation(*overrides: str) -> float:
    cfg = _config(*overrides)
    model = PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)
    inputs = model.draw(20000, np.random.default_rng(0), 0)
    logits = model._unbiased(model.raw_terms(inputs))
    return float(np.corrcoef(logits[:, 0], logits[:, 1])[0, 1])


def test_each_tasks_own_terms_make_the_tasks_less_alike():
    shared = _task_logit_correlation("data.synthetic.task_interaction_scale=0", "data.synthetic.task_domain_scale=0")
    own = _task_logit_correlation("data.synthetic.task_interaction_scale=1.0", "data.synthetic.task_domain_scale=1.0")
    assert shared - own > 0.15, (shared, own)


def test_task_domain_term_depends_on_the_domain_and_differs_per_task():
    cfg = _config()
    model = PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)
    inputs = model.draw(20000, np.random.default_rng(1), 0)
    term = model.raw_terms(inputs)["task_dom"]  # [n, T]
    category = model.group(inputs.sparse[1], 1)
    cell = inputs.domain * cfg.data.synthetic.num_clusters + category
    for c in np.unique(cell):  # a function of (domain, item category) only
        assert np.ptp(term[cell == c], axis=0).max() < 1e-12
    same_category = category == 0
    per_domain = [term[same_category & (inputs.domain == d)][0] for d in range(3)]
    assert np.ptp(np.array(per_domain), axis=0).min() > 0.1  # the domain moves it, for every task
    assert abs(np.corrcoef(term[:, 0], term[:, 1])[0, 1]) < 0.5  # and differently per task


def _top_item_share(shift: float) -> float:
    """Share of domain-2 impressions whose item is among domain 0's 20 most frequent items."""
    cfg = _config(f"data.synthetic.domain_feature_shift={shift}")
    model = PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)
    inputs = model.draw(40000, np.random.default_rng(2), 0)
    item, domain = inputs.sparse[1], inputs.domain
    ids, counts = np.unique(item[domain == 0], return_counts=True)
    top = ids[np.argsort(-counts)[:20]]
    return float(np.isin(item[domain == 2], top).mean())


def test_domains_shift_the_item_distribution():
    alike, shifted = _top_item_share(0.0), _top_item_share(0.8)
    assert alike > 0.2
    assert shifted < 0.5 * alike, (alike, shifted)


def test_bad_multitask_generator_settings_name_the_key():
    from recscale.configs import collect_problems

    problems = "\n".join(
        collect_problems(_config("data.synthetic.conversion_label=click", "data.synthetic.domain_feature_shift=1.5"))
    )
    assert "data.synthetic.conversion_label: 'click' is not one of data.features.labels after the first" in problems
    assert "data.synthetic.domain_feature_shift: expected a fraction in [0, 1], got 1.5" in problems
