"""Learning-rate decay on plateau, early stopping and best-weights restore."""

from __future__ import annotations

import json

import pytest

from recscale.configs.schema import EarlyStoppingConfig
from recscale.trainer.loop import train
from recscale.trainer.plateau import Plateau
from tests.distributed import run_distributed
from tests.trainer.runs import new_run, small_job


def test_plateau_decays_then_stops():
    p = Plateau(EarlyStoppingConfig(metric="auc", lr_decay=0.1, patience=2))
    assert p.observe(1, {"auc": 0.70}) is True
    assert p.observe(2, {"auc": 0.72}) is True
    assert p.observe(3, {"auc": 0.71}) is False and p.state.lr_factor == pytest.approx(0.1)
    assert not p.state.stopped
    assert p.observe(4, {"auc": 0.72}) is False  # equal is not better
    assert p.state.stopped and p.state.lr_factor == pytest.approx(0.01)
    assert (p.state.best, p.state.best_step) == (0.72, 2)


def test_logloss_improves_downwards_and_state_round_trips():
    p = Plateau(EarlyStoppingConfig(metric="logloss", min_delta=0.01, patience=3))
    p.observe(1, {"logloss": 0.50})
    assert p.observe(2, {"logloss": 0.495}) is False  # better by less than min_delta
    assert p.observe(3, {"logloss": 0.40}) is True
    q = Plateau(p.cfg)
    q.load_state_dict(p.state_dict())
    assert q.state == p.state


def _train(rank, world, cfg, run_dir):
    return train(cfg, run_dir)


@pytest.mark.distributed
def test_early_stop_restores_the_best_weights_and_decays_the_rate(tmp_path):
    cfg = small_job(
        tmp_path / "cache",
        "trainer.epochs=4",
        "trainer.eval_each_epoch=true",
        "trainer.early_stopping={metric: auc, min_delta: 1.0, lr_decay: 0.1, patience: 2, restore_best: true}",
        "checkpoint.every_steps=0",
    )
    run_dir = new_run(tmp_path, "run", cfg)
    summary = run_distributed(_train, 2, cfg, run_dir)[0]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    plateau = [r for r in records if r["kind"] == "plateau"]
    # epoch 1 (step 8) is the first full evaluation and so the best; nothing beats it by min_delta 1.0:
    # step 16 decays the rate (x0.1), step 24 decays again and stops the run (patience 2), before 4 epochs
    assert [e["step"] for e in evals[:3]] == [8, 16, 24] and summary["steps"] == 24
    assert [p["improved"] for p in plateau] == [True, False, False]  # the final evaluation reuses step 24
    assert plateau[1]["lr_factor"] == pytest.approx(0.1) and plateau[2]["stopped"] is True
    lr = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lr[17] == pytest.approx(0.1 * lr[16]) and lr[24] == pytest.approx(lr[17])
    final = summary["final_eval"]
    assert final["restored_from_step"] == 8
    assert final["auc"] == pytest.approx(evals[0]["auc"], abs=1e-9)  # the best weights, evaluated again
    assert (run_dir / "checkpoints" / "best" / "manifest.json").is_file()
