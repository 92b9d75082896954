"""Planted useless features and per-task features (``data.synthetic.useless_features`` / ``task_features``)."""

from __future__ import annotations

import numpy as np

from recscale.configs import collect_problems, load_config
from recscale.data.planted import PlantedModel

USELESS = "data.synthetic.useless_features=[category, context_1, dense_2]"


def _model(*overrides: str) -> PlantedModel:
    cfg = load_config("multitask_synthetic", list(overrides))
    return PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)


def _redrawn(model: PlantedModel, inputs, field: int | None = None, dense: int | None = None):
    """``inputs`` with one sparse field's ids (or one dense column) replaced by another draw."""
    other = model.draw(len(inputs.dense), np.random.default_rng(99), 0)
    sparse = list(inputs.sparse)
    values = inputs.dense.copy()
    if field is not None:
        sparse[field] = other.sparse[field]
    if dense is not None:
        values[:, dense] = other.dense[:, dense]
    return type(inputs)(sparse, values, inputs.sequences, inputs.timestamps, inputs.domain)


def test_useless_features_are_drawn_as_usual_but_move_no_probability():
    plain, masked = _model(), _model(USELESS)
    a = plain.draw(4000, np.random.default_rng(0), 0)
    b = masked.draw(4000, np.random.default_rng(0), 0)
    assert all(np.array_equal(x, y) for x, y in zip(a.sparse, b.sparse)) and np.array_equal(a.dense, b.dense)
    p = masked.probabilities(b)
    for field, dense in ((2, None), (4, None), (None, 2)):
        assert np.array_equal(masked.probabilities(_redrawn(masked, b, field, dense)), p)
        moved = plain.probabilities(_redrawn(plain, a, field, dense))  # the same change matters without the mask
        assert np.abs(moved - plain.probabilities(a)).max() > 1e-3
    assert np.abs(masked.probabilities(_redrawn(masked, b, 3)) - p).max() > 1e-3  # context_0 still counts


def test_task_features_limit_each_tasks_id_term():
    only_ids = [
        "data.synthetic.interaction_scale=0",
        "data.synthetic.hierarchical_scale=0",
        "data.synthetic.task_interaction_scale=0",
        "data.synthetic.task_domain_scale=0",
        "data.synthetic.domain_scale=0",
        "data.synthetic.domain_feature_shift=0",
        "data.synthetic.task_features={click: [user, item, category], purchase: [context_2]}",
    ]
    model = _model(*only_ids)
    inputs = model.draw(4000, np.random.default_rng(1), 0)
    p = model.probabilities(inputs)
    purchase_only = model.probabilities(_redrawn(model, inputs, 5))  # context_2
    assert np.array_equal(purchase_only[:, 0], p[:, 0]) and np.abs(purchase_only[:, 1] - p[:, 1]).max() > 1e-3
    click_only = model.probabilities(_redrawn(model, inputs, 0))  # user
    assert np.array_equal(click_only[:, 1], p[:, 1]) and np.abs(click_only[:, 0] - p[:, 0]).max() > 1e-3
    neither = model.probabilities(_redrawn(model, inputs, 3))  # context_0: listed for no task
    assert np.array_equal(neither, p)


def test_bad_planted_feature_settings_name_the_key():
    cfg = load_config(
        "multitask_synthetic",
        [
            "data.synthetic.useless_features=[context_0, nope, user, context_0, dense_1]",
            "data.synthetic.task_features={buy: [item], click: [ghost, context_0]}",
        ],
    )
    problems = "\n".join(collect_problems(cfg))
    assert "data.synthetic.useless_features[1]: no feature named 'nope'" in problems
    assert "data.synthetic.useless_features[2]: 'user' is one of the first two sparse features" in problems
    assert "data.synthetic.useless_features[3]: 'context_0' is listed twice" in problems
    assert "useless_features[0]" not in problems and "useless_features[4]" not in problems
    assert "data.synthetic.task_features.buy: no label named 'buy'" in problems
    assert "data.synthetic.task_features.click[0]: no sparse feature named 'ghost'" in problems
    assert "data.synthetic.task_features.click[1]: 'context_0' is also in data.synthetic.useless_features" in problems
    assert not collect_problems(load_config("multitask_synthetic", [USELESS]))
