"""The quality benchmarks' statistical verdicts: paired by seed, decided by 95% Student-t intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from exfm import _best_map, _recorded  # noqa: E402
from frappe_quality import hilomoe_vs_backbone, judge  # noqa: E402
from kunlun_quality import paired_verdict  # noqa: E402
from multitask import architecture_verdicts  # noqa: E402
from verdicts import at_least, at_most, t_interval  # noqa: E402


def test_the_interval_of_three_seeds_uses_students_t_not_two_standard_errors() -> None:
    out = t_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, standard error 1/sqrt(3)
    assert out["t_quantile"] == pytest.approx(4.302653, abs=1e-6)  # t(0.975, 2 df), from any t table
    assert out["low"] == pytest.approx(2 - 4.302653 / 3**0.5, abs=1e-6)
    assert out["high"] == pytest.approx(2 + 4.302653 / 3**0.5, abs=1e-6)
    assert t_interval([0.0] * 30)["t_quantile"] == pytest.approx(2.045230, abs=1e-6)  # 29 df
    # the mean is 2.6 standard errors above 0.8: "met" at two standard errors, not at 95% with 3 seeds
    assert at_least(t_interval([0.9, 1.1, 1.3]), 0.8) == "unresolved"
    assert at_least(t_interval([1.0, 1.05, 1.1]), 0.5) == "met"
    assert at_most(t_interval([1.0, 1.05, 1.1]), 0.5) == "not_met"
    single = t_interval([0.99])
    assert single["low"] is None and at_least(single, 0.5) == "unresolved" and at_most(single, 2.0) == "unresolved"


def test_a_model_verdict_needs_more_than_one_seed() -> None:
    results = {
        "dcnv2": {"runs": [{"seed": s, "valid_auc": a} for s, a in enumerate([0.9851, 0.9849, 0.9850])]},
        "wukong": {"runs": [{"seed": 0, "valid_auc": 0.9900}]},
    }
    judge(results)
    assert results["verdict"]["dcnv2"]["confirmed"] == "met"  # 0.9850 +- 0.0002 (t) against 0.984
    assert results["verdict"]["wukong"]["mean_meets_target"] is True
    assert results["verdict"]["wukong"]["confirmed"] == "unresolved"  # one seed proves nothing
    assert "chosen on that same split" in results["protocol"]


def _model(aucs: dict[int, float], flops: int) -> dict:
    runs = [{"seed": s, "valid_auc": a} for s, a in aucs.items()]
    return {"valid_auc": sum(aucs.values()) / len(aucs), "flops_per_example": flops, "runs": runs}


@pytest.mark.parametrize(
    ("moe", "confirmed"),
    [
        ({0: 0.9027, 1: 0.912821, 2: 0.892581}, "met"),  # +0.30%, +0.31%, +0.29%
        ({0: 0.9000, 1: 0.9100, 2: 0.8900}, "not_met"),  # level on every seed
        ({0: 0.9100, 1: 0.9000, 2: 0.8900}, "unresolved"),  # +1.1%, -1.1%, 0: the seeds cannot tell
    ],
)
def test_hilomoe_gain_is_paired_by_seed(moe: dict[int, float], confirmed: str) -> None:
    base = _model({0: 0.9000, 1: 0.9100, 2: 0.8900}, 1000)
    out = hilomoe_vs_backbone(base, _model(moe, 900))
    assert out["confirmed"] == confirmed
    assert out["flops_change_relative"] == pytest.approx(-0.1)
    assert out["auc_gain_relative_per_seed"] == pytest.approx(
        [moe[s] / base["runs"][s]["valid_auc"] - 1 for s in range(3)]
    )


def test_hilomoe_gain_skips_seeds_the_backbone_lacks() -> None:
    out = hilomoe_vs_backbone(_model({0: 0.90}, 1000), _model({0: 0.91, 5: 0.99}, 900))
    assert out["auc_gain_relative_per_seed"] == pytest.approx([0.91 / 0.90 - 1])
    assert out["confirmed"] == "unresolved"  # one pair has no standard error


@pytest.mark.parametrize(
    ("paired", "confirmed"),
    [
        ([0.0001, -0.0002, 0.0000], "equal"),
        ([0.004, 0.005, 0.0045], "worse"),
        ([0.0006, 0.0065, -0.0101], "unresolved"),
    ],
)
def test_compskip_equal_quality_verdict(paired: list[float], confirmed: str) -> None:
    out = paired_verdict(paired)
    assert out["confirmed"] == confirmed
    assert out["gap_minus_full_gap"] == pytest.approx(sum(paired) / len(paired))


def _arm(aucs: dict[int, float], flops: int) -> dict[str, dict]:
    gap = {"auc_gap": 0.1}
    return {
        str(s): {"mean_auc": a, "train_flops_per_example": flops, "click": gap, "purchase": gap}
        for s, a in aucs.items()
    }


def test_extended_arms_are_paired_on_the_seeds_both_ran() -> None:
    """``multitask.py --extend`` adds seeds to two arms only: each pair uses the seeds both have, and the
    table of means stays on the seeds every arm ran."""
    runs = {
        "shared_bottom": _arm({0: 0.70, 1: 0.71, 2: 0.72}, 100),
        "ple_interaction": _arm({0: 0.71, 1: 0.72, 2: 0.73, 3: 0.70, 4: 0.74}, 300),
        "lattice_small": _arm({0: 0.72, 1: 0.72, 2: 0.74, 3: 0.71, 4: 0.74}, 290),
    }
    out = architecture_verdicts(runs, [0, 1, 2, 3, 4])
    lattice = out["lattice_small_over_ple_interaction_relative"]
    assert lattice["seeds"] == [0, 1, 2, 3, 4]
    assert lattice["per_seed"] == pytest.approx([0.72 / 0.71 - 1, 0.0, 0.74 / 0.73 - 1, 0.71 / 0.70 - 1, 0.0])
    assert lattice["flops_le_ple_interaction"] is True
    assert out["ple_interaction_minus_shared_bottom"]["seeds"] == [0, 1, 2]
    assert out["ple_interaction_minus_shared_bottom"]["per_seed"] == pytest.approx([0.01, 0.01, 0.01])
    assert out["mean_over_seeds"] == [0, 1, 2]
    assert out["mean"]["lattice_small"]["mean_auc"] == pytest.approx((0.72 + 0.72 + 0.74) / 3)


def test_exfm_extend_refuses_another_recipe(tmp_path: Path) -> None:
    arms = {"plain": ["model.teacher.loss_weight=0"]}
    out = tmp_path / "exfm.json"
    out.write_text(json.dumps({"longer": {"arms": arms, "generator": ["a=1"], "runs": {"0": {}}, "seeds": [0]}}))
    assert _recorded(out, "longer", arms, ["a=1"])["seeds"] == [0]
    with pytest.raises(SystemExit, match="other generator"):
        _recorded(out, "longer", arms, ["a=2"])
    with pytest.raises(SystemExit, match="other arms"):
        _recorded(out, "longer", {"single_head": []}, ["a=1"])
    with pytest.raises(SystemExit, match="no runs under other"):
        _recorded(out, "other", arms, ["a=1"])


def test_the_teachers_best_recalibration_is_the_logistic_fit_of_its_logit() -> None:
    """``exfm.py --recalibration`` fits σ(a·z + b) to a day's labels: the maximum-likelihood fit, as an
    unregularised logistic regression on the logit finds it; a shift-only fit keeps a = 1."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    z = rng.normal(-2.0, 1.0, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.8 * z + 0.3)))).astype(np.float64)
    a, b = _best_map(y, z, affine=True)
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert (a, b) == pytest.approx((fit.coef_[0, 0], fit.intercept_[0]), abs=1e-4)
    one, shift = _best_map(y, z, affine=False)
    assert one == 1.0 and np.sum(1 / (1 + np.exp(-(z + shift))) - y) == pytest.approx(0.0, abs=1e-6)
