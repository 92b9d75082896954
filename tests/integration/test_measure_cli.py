"""Measurement commands end to end: train --profile with its report, sweep (+ projection), scaling-law, project.

Real torchrun launches on CPU ranks with tiny synthetic data; each run takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recscale.launch import cli
from tests.launch.helpers import in_process

from .test_cli import recscale, with_sets

pytestmark = pytest.mark.integration

TINY = [
    "data.synthetic.num_train=4096",
    "data.synthetic.num_valid=1024",
    "data.synthetic.row_group_size=512",
    "data.reader.shuffle_buffer_rows=1024",
    "trainer.batch_size=512",
    "trainer.eval_every=0",
    "trainer.log_every=2",
    "metrics.progress_bar=never",
    "metrics.tensorboard=false",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("measure")


def _sets(root: Path, *extra: str) -> list[str]:
    return with_sets([*TINY, f"data.cache_dir={root / 'cache'}", f"launch.run_root={root / 'runs'}", *extra])


def test_train_with_profile_writes_trace_module_table_and_report(root, capfd):
    args = ["train", "quickstart", "--nproc", "1", "--profile", *_sets(root, "metrics.profile_wait_steps=3")]
    proc = in_process(capfd, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: "))
    run_dir = report.parent
    assert report.name == "report.html" and (run_dir / "report.md").is_file()
    html = report.read_text()
    assert html.count('src="data:image/png;base64,') >= 6 and "Per module" in html and "MFU" in html
    trace = json.loads((run_dir / "profile" / "rank0.pt.trace.json").read_text())  # Chrome trace JSON
    assert any(e.get("name", "").startswith("recscale.module::") for e in trace["traceEvents"])
    table = json.loads((run_dir / "profile" / "modules.json").read_text())
    assert [r["module"] for r in table["rows"]] == ["cross", "deep", "head"]
    assert (table["first_step"], table["last_step"]) == (4, 8)  # 8 steps in all: clamped to the run's end
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 and 0 < r["mfu"] < 1 for r in table["rows"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["emb/bytes_per_example"] == 8 * 16 * 4  # 8 single-id features, dim 16, fp32
    assert train[-1]["emb/gbytes_per_s_per_rank"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["embedding"]["bytes_per_example"] == 512 and set(summary["flops_breakdown"]) == {
        "cross",
        "deep",
        "head",
    }


def test_sweep_trains_each_world_size_and_reports_efficiency_and_projection(root, capfd):
    out = root / "sweep"
    proc = in_process(
        capfd,
        "sweep",
        "quickstart",
        "--world-sizes",
        "1,2",
        "--steps",
        "8",
        "--out",
        str(out),
        "--project-nodes",
        "1,2",
        "--ranks-per-node",
        "2",
        "--planner-device",
        "cpu",
        *_sets(root),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    index = json.loads((out / "sweep.json").read_text())
    assert index["mode"] == "weak" and index["batch_size_per_rank"] == 512
    assert [(r["world_size"], r["run_dir"]) for r in index["runs"]] == [(1, "runs/ws1"), (2, "runs/ws2")]
    for n in (1, 2):
        summary = json.loads((out / "runs" / f"ws{n}" / "summary.json").read_text())
        assert summary["world_size"] == n and summary["batch_size"] == 512 * n and summary["steps"] == 8
    projection = json.loads((out / "projection.json").read_text())
    assert [t["world_size"] for t in projection["topologies"]] == [2, 4]
    assert all(t["embedding_step_ms"] > 0 for t in projection["topologies"])
    html = (out / "report.html").read_text()
    assert "Scaling efficiency (weak scaling)" in html and "Projection to larger topologies" in html


@pytest.mark.slow
def test_sweep_through_torchx_local_cwd(root):
    out = root / "sweep_cwd"
    proc = recscale(
        "sweep",
        "quickstart",
        "--world-sizes",
        "1",
        "--steps",
        "4",
        "--scheduler",
        "local_cwd",
        "--out",
        str(out),
        *_sets(root),
    )
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    index = json.loads((out / "sweep.json").read_text())
    assert index["scheduler"] == "local_cwd" and [r["world_size"] for r in index["runs"]] == [1]
    assert (out / "runs" / "ws1" / "launch.json").is_file()  # recscale launch (TorchX) ran it
    assert json.loads((out / "runs" / "ws1" / "summary.json").read_text())["steps"] == 4


def test_scaling_law_fits_a_family_of_sizes(root, capfd):
    out = root / "law"
    proc = in_process(
        capfd,
        "scaling-law",
        "quickstart",
        "--size",
        "narrow",
        "model.over_arch=[16]",
        "model.dcnv2.low_rank=4",
        "--size",
        "wide",
        "model.over_arch=[256,128]",
        "--bootstrap",
        "20",
        "--out",
        str(out),
        *_sets(root),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    index = json.loads((out / "scaling_law.json").read_text())
    assert [p["label"] for p in index["points"]] == ["narrow", "wide"]
    assert index["compute_span"] > 3 and index["points"][0]["mflop_train"] < index["points"][1]["mflop_train"]
    assert index["log_linear"]["points"] == 2 and index["power_law"] is None  # 3 parameters need 3 points
    assert "Scaling law: logloss against compute" in (out / "report.html").read_text()


def test_project_and_report_commands_in_process(root, capsys):
    out = root / "projection"
    args = [
        "project",
        "quickstart",
        "--nodes",
        "1,2",
        "--ranks-per-node",
        "2",
        "--device",
        "cpu",
        "--dense-step-ms",
        "5",
        "--batch-size-per-rank",
        "256",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    assert "efficiency 100.0%" in capsys.readouterr().out and (out / "report.html").is_file()
    assert cli.main(["report", str(out), "--out", str(root / "again.html")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {root / 'again.html'}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "quickstart", "--world-sizes", "2,1"], "--world-sizes"),
        (["sweep", "quickstart", "--world-sizes", "1", "--scheduler", "nowhere"], "--scheduler"),
        (["sweep", "quickstart", "--world-sizes", "1,3", "--mode", "strong"], "do not divide"),
        (["scaling-law", "quickstart", "--size", "only", "model.over_arch=[16]"], "at least 2 sizes"),
        (["scaling-law", "quickstart", "--sizes", "quickstart,dlrm_criteo"], "differ from size"),
        (["project", "quickstart", "--nodes", "1", "--dense-step-ms", "5", "--out", "x"], "--batch-size-per-rank"),
        (["report", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_measure_commands_fail_with_the_argument_named(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
