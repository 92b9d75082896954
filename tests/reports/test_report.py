"""``recscale report``: self-contained HTML with inline charts and a Markdown twin with PNG files."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest

from recscale.reports.report import write_report

from .fake_runs import write_run, write_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_one_run_report_inlines_every_chart_and_writes_its_markdown_twin(tmp_path):
    run = write_run(tmp_path / "run", profile=True)
    page = write_report([run])
    assert page == run / "report.html"
    html = page.read_text()
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # nothing to fetch
    images = _images(html)
    assert len(images) == 6 and all(img.startswith(PNG_MAGIC) for img in images)
    for heading in ("Summary", "Training curves", "Where the time goes", "Per module", "Sharding plan", "Config"):
        assert f"<h2>{heading}" in html, heading
    md = (run / "report.md").read_text()
    pngs = re.findall(r"!\[[^]]*\]\((report_files/[^)]+\.png)\)", md)
    assert len(pngs) == 6 and all((run / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert "| MFU | 3.00% |" in md  # 3 MFLOP x 1000 examples/s / 0.1 TFLOP/s


def test_staged_run_report_has_a_row_per_stage(tmp_path):
    run = write_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    stage = {"examples_per_s_per_rank": 900.0, "tflops_per_rank": 0.0018, "mfu": 0.018}
    summary["stages"] = [
        {"stage": "backbone", "train": "backbone", "first_step": 1, "last_step": 10, "steps_run": 10}
        | {"flops_per_example": {"forward": 6e5, "train": 2e6}}
        | stage,
        {"stage": "experts", "train": "experts", "first_step": None, "last_step": None, "steps_run": 0}
        | {"flops_per_example": None, "examples_per_s_per_rank": None, "tflops_per_rank": None, "mfu": None},
    ]
    (run / "summary.json").write_text(json.dumps(summary))
    write_report([run])
    md = (run / "report.md").read_text()
    assert "## Training stages" in md
    assert "| backbone | backbone | 1..10 | 10 | 2 | 900 | 1.80% |" in md
    assert "| experts | experts | - | 0 |" in md  # the run ended before it: no numbers made up


def test_sweep_report_has_efficiency_and_the_time_split(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    html = write_report([sweep]).read_text()
    assert "Scaling efficiency (weak scaling)" in html and "90.0%" in html and "70.0%" in html
    assert len(_images(html)) >= 4


def test_projection_and_scaling_law_sections(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", sizes=(1, 2))
    projection = {
        "measured": {"dense_step_ms": 5.0, "batch_size_per_rank": 256, "source": "run", "device": "cpu"},
        "gradient_bytes": 4e6,
        "bandwidth": {"intra_node_gb_per_s": 600.0, "inter_node_gb_per_s": 12.5, "source": "TorchRec"},
        "ranks_per_node": 8,
        "planner_device": "cuda",
        "topologies": [
            {
                "nodes": n,
                "world_size": 8 * n,
                "batch_size_per_rank": 256,
                "embedding_step_ms": 1.0,
                "embedding_max_rank_bytes": 2**20,
            }
            for n in (1, 2, 4)
        ],
    }
    (sweep / "projection.json").write_text(json.dumps(projection))
    law = tmp_path / "law"
    runs = []
    for i, (flops, loss) in enumerate([(1e5, 0.31), (4e5, 0.30), (1.6e6, 0.295), (6.4e6, 0.292)]):
        write_run(law / "runs" / f"s{i}", flops_train=flops, logloss=loss)
        runs.append({"label": f"s{i}", "run_dir": f"runs/s{i}"})
    index = {"kind": "scaling_law", "metric": "logloss", "runs": runs, "points": [], "bootstrap": 50}
    (law / "scaling_law.json").write_text(json.dumps(index))
    html = write_report([sweep, law], tmp_path / "both.html").read_text()
    assert "Projection to larger topologies" in html and "ring" in html
    assert "Scaling law: logloss against compute" in html and "power law c" in html and "log-linear eta" in html
    with pytest.raises(ValueError, match="--out"):
        write_report([sweep, law])


def test_reports_import_no_torch():
    code = (
        "import sys, recscale.reports.report, recscale.reports.law; "
        "bad = [m for m in ('torch', 'torchrec', 'deepspeed', 'torchx') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
