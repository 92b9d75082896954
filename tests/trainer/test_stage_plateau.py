"""Stages driven by the validation plateau: a stage ends when it stops improving, and the next one
starts from the best weights so far (the BARS protocol applied per stage)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from recscale.configs import ConfigError, load_config
from recscale.configs.schema import StageConfig
from recscale.configs.validate import validate
from recscale.sharding.checkpoint.export import dense_weights
from recscale.trainer.stages import StageSchedule
from tests.distributed import run_distributed
from tests.trainer.runs import losses, new_run, small_job, train_watching_stages

# Full evaluations every 2 steps; nothing after the first one counts as better (min_delta 1), so the
# backbone stage's plateau stops at step 4 (planned: 12) with the best weights those of step 2.
PLATEAU_STAGES = [
    "trainer.stages=[{name: backbone, train: backbone, steps: 12, end_on_plateau: true},"
    " {name: experts, train: experts, steps: 4, start_from_best: true}]",
    "trainer.max_steps=0",
    "trainer.eval_every=2",
    "trainer.eval_batches=0",
    "trainer.early_stopping={metric: auc, min_delta: 1.0, patience: 1, restore_best: true}",
    "model.hilomoe.num_experts=4",
]


def test_schedule_moves_later_stages_when_one_ends_early():
    stages = [StageConfig(name=n, train="all", steps=s) for n, s in (("a", 10), ("b", 5), ("c", 5))]
    schedule = StageSchedule(stages)
    assert schedule.starts == [0, 10, 15] and schedule.total_steps == 20
    assert schedule.end_stage(4)
    assert schedule.starts == [0, 4, 9] and schedule.total_steps == 14
    assert schedule.is_boundary(4) and schedule.index_after(4) == 1
    assert not schedule.end_stage(12)  # the last stage: the run ends instead
    again = StageSchedule(stages)
    again.load_state_dict(schedule.state_dict())
    assert again.starts == [0, 4, 9]
    with pytest.raises(ValueError, match="the checkpoint has 2 stages, the config 3"):
        again.load_state_dict({"starts": [0, 4]})


def test_plateau_stage_options_are_checked():
    stages = "trainer.stages=[{name: a, train: all, steps: 4, start_from_best: true, end_on_plateau: true}]"
    cfg = load_config("dcnv2_hilomoe", [stages, "trainer.max_steps=0"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, 2, "cpu")
    text = str(err.value)
    assert "trainer.stages[0] (a).end_on_plateau: needs trainer.early_stopping.patience >= 1" in text
    assert "trainer.stages[0] (a).start_from_best: needs trainer.early_stopping.restore_best: true" in text
    assert "trainer.stages[0] (a).start_from_best: the first stage has no earlier best" in text


def _train(rank, world, cfg, run_dir, resume):
    entered = {}

    def record(parallel, stage):  # the dense weights each stage starts from (after any restore)
        entered[stage.name] = {k: v.detach().clone() for k, v in parallel.dense.inner.state_dict().items()}

    train_watching_stages(cfg, run_dir, resume, record)
    return entered


@pytest.mark.distributed
@pytest.mark.slow
def test_stage_ends_on_plateau_and_next_starts_from_best(tmp_path):
    cfg = small_job(tmp_path / "cache", *PLATEAU_STAGES, preset="dcnv2_hilomoe")
    full = new_run(tmp_path, "full", cfg)
    entered = run_distributed(_train, 2, cfg, full, False)[0]
    records = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]

    stages = [(r["stage"], r["first_step"], r["last_step"]) for r in records if r["kind"] == "stage"]
    assert stages == [("backbone", 1, 12), ("experts", 5, 8)]
    assert [(r["step"], r["stage"]) for r in records if r["kind"] == "stage_end"] == [(4, "backbone")]
    restores = [(r["step"], r["best_step"], r["when"]) for r in records if r["kind"] == "restore_best"]
    # the experts stage (the last) stops the run on its own plateau at step 6, then the best is restored
    assert restores == [(4, 2, "start of stage 'experts'"), (6, 2, "end of the run")]
    assert sorted(losses(full)) == list(range(1, 7))
    # the summary has the steps the stages took: the backbone's early end, the run's own stop
    rows = json.loads((full / "summary.json").read_text())["stages"]
    assert [(r["stage"], r["first_step"], r["last_step"], r["steps_run"]) for r in rows] == [
        ("backbone", 1, 4, 4),
        ("experts", 5, 6, 2),
    ]

    # the experts stage began from step 2's weights, not from where the backbone stage stopped (step 4)
    best = dense_weights(full / "checkpoints" / "best")
    at_stop = dense_weights(full / "checkpoints" / "step_00000004")
    start = entered["experts"]
    assert all(torch.equal(start[k], best[k]) for k in best)
    assert any(not torch.equal(start[k], at_stop[k]) for k in at_stop if at_stop[k].is_floating_point())

    # a resume at the stage boundary takes the same boundary and restores the same weights
    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004")
    shutil.copytree(full / "checkpoints" / "best", resumed / "checkpoints" / "best")
    run_distributed(_train, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert [got[s] for s in range(5, 7)] == [expected[s] for s in range(5, 7)]
