"""The quality benchmarks' statistical verdicts: paired by seed, decided at two standard errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from frappe_quality import hilomoe_vs_backbone  # noqa: E402
from kunlun_quality import paired_verdict  # noqa: E402


def _model(aucs: dict[int, float], flops: int) -> dict:
    runs = [{"seed": s, "valid_auc": a} for s, a in aucs.items()]
    return {"valid_auc": sum(aucs.values()) / len(aucs), "flops_per_example": flops, "runs": runs}


@pytest.mark.parametrize(
    ("moe", "confirmed"),
    [
        ({0: 0.9020, 1: 0.9112, 2: 0.8919}, "met"),  # +0.2% on every seed
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
