"""``recscale train --resume`` and ``--init-from`` end to end: a finished run is left alone, a resumed run's
config must agree with its own, a longer run extends it as a further section, and a new run starts from
another run's weights (tables of other sizes refused, named)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recscale.launch.resume import nothing_to_do, resume_config
from tests.integration.test_cli import recscale, with_sets
from tests.launch.helpers import in_process

pytestmark = pytest.mark.integration

TINY = [
    "data.synthetic.num_train=8192",
    "data.synthetic.num_valid=2048",
    "data.synthetic.row_group_size=1024",
    "trainer.batch_size=1024",
    "trainer.max_steps=4",
    "trainer.eval_every=0",
    "trainer.log_every=2",
    "metrics.progress_bar=never",
    "metrics.tensorboard=false",
]


def _run_dir(stdout: str) -> Path:
    return Path(next(x for x in stdout.splitlines() if x.startswith("run directory: ")).split(": ", 1)[1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-rank run of 4 steps, and the overrides it was started with."""
    root = tmp_path_factory.mktemp("resume")
    sets = [*TINY, f"data.cache_dir={root / 'cache'}", f"launch.run_root={root / 'runs'}"]
    return _run_dir(recscale("train", "quickstart", "--nproc", "2", *with_sets(sets)).stdout), sets, root


def test_resuming_a_finished_run_does_nothing_and_changes_nothing(finished, capfd):
    run_dir, _, _ = finished
    before = {name: (run_dir / name).read_bytes() for name in ("summary.json", "report.html", "metrics.jsonl")}
    proc = in_process(capfd, "train", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f"recscale train: {run_dir} finished at step 4; nothing to do (to train longer, resume it with "
        "--set trainer.epochs=N or --set trainer.max_steps=N)"
    )
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_a_resume_whose_config_differs_is_refused_naming_the_keys(finished, capfd):
    run_dir, sets, _ = finished
    proc = in_process(capfd, "train", "--resume", str(run_dir), "--set", "optimizer.dense.lr=0.5")
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "the config differs from the run's (optimizer.dense.lr: 0.002 in the run, 0.5 asked)" in line
    assert f"start a new run with --init-from {run_dir}" in line
    # CONFIG given with --resume: the preset without the run's overrides differs in those keys
    with pytest.raises(ValueError, match="data.synthetic.num_train: 8192 in the run, 120000 asked"):
        resume_config(run_dir, "quickstart", [])
    # the same preset with the same overrides agrees; so does a longer run
    assert resume_config(run_dir, "quickstart", sets).trainer.max_steps == 4
    assert resume_config(run_dir, None, ["trainer.epochs=3"]).trainer.epochs == 3
    with pytest.raises(ValueError, match="not a run directory"):
        resume_config(run_dir / "checkpoints", None, [])


def test_a_longer_run_extends_a_finished_one_as_a_new_section(finished, tmp_path, capfd):
    run_dir, _, _ = finished
    extended = tmp_path / run_dir.name
    shutil.copytree(run_dir, extended)
    proc = in_process(capfd, "train", "--resume", str(extended), "--set", "trainer.max_steps=8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((extended / "summary.json").read_text())
    assert (summary["steps"], summary["planned_steps"], summary["ended"]) == (8, 8, "completed")
    assert [(s["first_step"], s["last_step"]) for s in summary["sections"]] == [(1, 4), (5, 8)]
    assert all(s["examples_per_s"] > 0 for s in summary["sections"])
    assert summary["throughput"]["examples_per_s"] == summary["sections"][-1]["examples_per_s"]
    records = [json.loads(x) for x in (extended / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8]
    assert "max_steps: 8" in (extended / "config.yaml").read_text()


def test_init_from_starts_a_new_run_from_the_weights_and_refuses_other_table_sizes(finished, tmp_path, capfd):
    run_dir, sets, root = finished
    frozen = [*sets, f"launch.run_root={tmp_path / 'runs'}", "optimizer.dense.lr=0", "optimizer.sparse.lr=0"]
    proc = in_process(capfd, "train", "quickstart", "--nproc", "1", "--init-from", str(run_dir), *with_sets(frozen))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new_run = _run_dir(proc.stdout)
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    assert f"init_from: {checkpoint}" in (new_run / "config.yaml").read_text()
    # with every learning rate 0, the new run's weights stay the 2-rank run's, read here on 1 rank
    source = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    got = json.loads((new_run / "summary.json").read_text())["final_eval"]
    assert got["auc"] == pytest.approx(source["auc"], abs=1e-6)
    assert got["logloss"] == pytest.approx(source["logloss"], abs=1e-6)
    wider = in_process(  # refused before any rank starts
        capfd, "train", "quickstart", "--init-from", str(run_dir), *with_sets([*sets, "embeddings.tables.0.dim=8"])
    )
    (line,) = wider.stderr.strip().splitlines()
    assert line.endswith("table t_user has 20000 rows of dim 16 there, 20000 rows of dim 8 in this config")
    # a checkpoint away from its run directory: the ranks find the table that differs in the saved tensors
    alone = tmp_path / "elsewhere" / "step_00000004"
    shutil.copytree(checkpoint, alone)
    proc = in_process(
        capfd,
        "train",
        "quickstart",
        "--nproc",
        "1",
        "--init-from",
        str(alone),
        *with_sets([*sets, "embeddings.tables.0.dim=8"]),
    )
    assert proc.returncode != 0
    assert (
        "table t_user: the checkpoint has [20000, 16] (rows, dim), this model [20000, 8]" in proc.stdout + proc.stderr
    )


def test_train_without_config_or_ranks_or_rows_says_what_it_needs_in_one_line(tmp_path, capfd):
    proc = in_process(capfd, "train")  # each case is refused before any rank starts
    assert proc.stderr.strip() == (
        "recscale train: error: CONFIG is required (a preset name or a YAML file), unless --resume RUN_DIR "
        "continues a run"
    )
    proc = in_process(capfd, "train", "quickstart", "--nproc", "0", "--set", f"launch.run_root={tmp_path}")
    assert (proc.returncode, proc.stderr.strip()) == (2, "recscale train: error: --nproc 0: expected at least 1 rank")
    assert not list(tmp_path.iterdir())  # nothing started (it used to run on launch.nproc_per_node ranks)
    tiny = [f"launch.run_root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic.num_train=900"]
    proc = in_process(capfd, "train", "quickstart", "--nproc", "2", *with_sets([*tiny, "trainer.batch_size=1024"]))
    *progress, line = proc.stderr.strip().splitlines()  # progress: the synthetic data being generated
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and line.startswith("recscale train: error: ")
    assert line.endswith(
        "train: 900 training rows are fewer than one step needs: trainer.batch_size 1024 (512 per rank on 2 ranks; "
        "data.reader.tail=drop leaves out a last partial batch): use a smaller batch or more data"
    )
    assert not (tmp_path / "quickstart").exists() and not list(tmp_path.glob("quickstart-*"))


def test_a_run_that_stopped_early_is_not_extended(tmp_path):
    (tmp_path / "summary.json").write_text(
        json.dumps({"steps": 6, "ended": "early_stop", "stop_reason": "no better auc"})
    )
    said = nothing_to_do(tmp_path, 100)
    assert said.startswith(f"{tmp_path} stopped early at step 6 (no better auc); nothing to do")
    assert nothing_to_do(tmp_path / "never-finished", 100) == ""
    # a staged run whose stage ended early trained fewer steps than it planned: finished unless extended
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 70, "planned_steps": 100, "ended": "completed"}))
    assert "finished at step 70; nothing to do" in nothing_to_do(tmp_path, 100)
    assert nothing_to_do(tmp_path, 120) == ""
