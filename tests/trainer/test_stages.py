"""Three-stage training driven by the trainer: boundaries, what trains, exact resume inside a stage."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.distributed import run_distributed
from tests.trainer.runs import losses, new_run, small_job, train_watching_stages

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STAGES = [
    "trainer.stages=[{name: backbone, train: backbone, steps: 4},"
    " {name: experts, train: experts, steps: 4, expert_lr_scale: 2.0},"
    " {name: joint, train: all, steps: 4, backbone_lr_scale: 0.5, sparse_lr_scale: 0.5}]",
    "trainer.max_steps=0",
    "checkpoint.every_steps=3",
    "model.hilomoe.num_experts=4",
    "model.hilomoe.query=linear",  # a learned routing query, so the routers are a role of their own
]


def _train(rank, world, cfg, run_dir, resume):
    from recscale.modules.hilomoe import param_roles

    seen = {}

    def record(parallel, stage):  # which roles train in each stage
        roles = param_roles(parallel.dense.inner)
        trains = {n: p.requires_grad for n, p in parallel.dense.inner.named_parameters()}
        seen[stage.name] = sorted({roles[n] for n, on in trains.items() if on})

    train_watching_stages(cfg, run_dir, resume, record)
    return seen


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    cfg = small_job(root / "cache", *STAGES, preset="dcnv2_hilomoe")
    run_dir = new_run(root, "full", cfg)
    seen = run_distributed(_train, 2, cfg, run_dir, False)[0]
    return cfg, run_dir, root, seen


def test_stage_boundaries_are_logged_and_the_right_parameters_train(staged):
    cfg, run_dir, _, seen = staged
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stages = [r for r in records if r["kind"] == "stage"]
    assert [(r["stage"], r["first_step"], r["last_step"]) for r in stages] == [
        ("backbone", 1, 4),
        ("experts", 5, 8),
        ("joint", 9, 12),
    ]
    assert seen == {
        "backbone": ["backbone"],
        "experts": ["experts", "routers"],
        "joint": ["backbone", "experts", "routers"],
    }
    # stage 1 runs without experts: fewer FLOPs than the later stages
    assert stages[0]["flops_per_example_train"] < stages[2]["flops_per_example_train"]
    assert sorted(losses(run_dir)) == list(range(1, 13))


def test_summary_has_each_stages_steps_flops_and_mfu(staged):
    _, run_dir, _, _ = staged
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["stage"]: r["flops_per_example_train"] for r in records if r["kind"] == "stage"}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = summary["stages"]
    assert [(r["stage"], r["first_step"], r["last_step"], r["steps_run"]) for r in rows] == [
        ("backbone", 1, 4, 4),
        ("experts", 5, 8, 4),
        ("joint", 9, 12, 4),
    ]
    assert {r["stage"]: r["flops_per_example"]["train"] for r in rows} == logged  # the model each stage ran
    # the run's mean is the stages' mean weighted by their examples (equal here: 4 steps each)
    assert sum(r["flops_per_example"]["train"] for r in rows) / 3 == pytest.approx(
        summary["flops_per_example"]["train"], abs=1
    )
    for r in rows:  # the backbone stage's steps 1..3 are warm-up: its one steady step still has a rate
        assert r["mfu"] == pytest.approx(r["tflops_per_rank"] / summary["peak_tflops_per_rank"])
        assert r["examples_per_s_per_rank"] > 0 and 0 < r["mfu"] < 1


def test_resume_inside_a_stage_is_exact(staged):
    cfg, full, root, _ = staged
    resumed = new_run(root, "resumed", cfg)
    shutil.copytree(full / "checkpoints" / "step_00000006", resumed / "checkpoints" / "step_00000006")
    run_distributed(_train, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert [got[s] for s in range(7, 13)] == [expected[s] for s in range(7, 13)]
    records = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in records if r["kind"] == "stage"][0]
    assert first["stage"] == "experts" and first["resumed_inside"] is True
    rows = json.loads((resumed / "summary.json").read_text())["stages"]  # what this process ran
    assert [(r["stage"], r["steps_run"], r["flops_per_example"] is None) for r in rows] == [
        ("backbone", 0, True),
        ("experts", 2, False),
        ("joint", 4, False),
    ]


def test_expert_parallel_staged_run_resumes_exactly(tmp_path):
    """DeepSpeed expert parallelism (ep_size 2, ZeRO 1) through the trainer: a resume inside the expert
    stage continues with the uninterrupted run's losses, from the one checkpoint format."""
    cfg = small_job(tmp_path / "cache", *STAGES, preset="dcnv2_hilomoe_ep2")
    full = new_run(tmp_path, "full", cfg)
    run_distributed(_train, 2, cfg, full, False)
    checkpoint = full / "checkpoints" / "step_00000006"
    assert sorted(p.name for p in checkpoint.iterdir() if p.is_dir()) == ["trainer"]
    resumed = new_run(tmp_path, "resumed", cfg)
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step_00000006")
    run_distributed(_train, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    assert [got[s] for s in range(7, 13)] == [expected[s] for s in range(7, 13)]
