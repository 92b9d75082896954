"""fp32 export of 2-rank-trained runs, read by one process: predictions equal ``recscale eval``'s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.serving import ServingError, load, predict_file
from recscale.serving.export import export_run
from tests.serving.helpers import eval_predictions, train_small

pytestmark = pytest.mark.distributed


MIXED_PLAN = (
    "sharding.manual={t_user: {type: row_wise}, t_item: {type: table_row_wise}, t_category: {type: data_parallel},"
    " t_context_0: {type: table_row_wise}, t_context_1: {type: row_wise}, t_context_2: {type: table_row_wise},"
    " t_context_3: {type: table_wise, ranks: [1]}, t_context_4: {type: row_wise}}"
)
"""A hand-built plan of row-, table-row-, table-wise and data-parallel tables; t_context_3 is pinned to rank 1,
which evaluation on 1 rank folds onto rank 0."""

STAGED = (
    "trainer.stages=[{name: backbone, train: backbone, steps: 3}, {name: experts, train: experts, steps: 2},"
    " {name: joint, train: all, steps: 3}]",
    "trainer.max_steps=0",
    "model.hilomoe.num_experts=4",
)
"""HiLoMoE's three stages over the run's 8 steps: the last checkpoint is inside the last stage."""

ARCHS = {
    "dcnv2": ("quickstart", ()),
    "dlrm": ("quickstart", ("model.dense_arch=[32,16]", MIXED_PLAN)),
    "hilomoe": ("dcnv2_hilomoe", STAGED),
}
"""Preset and overrides per model: DCN-V2 with the planner's (table-wise) plan, DLRM with every kind of
shard, DCN-V2 + HiLoMoE trained in three stages."""


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, tmp_path_factory):
    """(run dir, artifact dir, recscale eval's result) of a small 2-rank run of each model."""
    root = tmp_path_factory.mktemp(request.param)
    preset, overrides = ARCHS[request.param]
    arch = () if request.param == "hilomoe" else (f"model.arch={request.param}",)
    run_dir = train_small(root, "run", *arch, *overrides, preset=preset)
    artifact = root / "artifact"
    export_run(run_dir, "latest", artifact, "none")
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return run_dir, artifact, eval_predictions(checkpoint)


def _valid_data(run_dir: Path) -> Path:
    return next(Path(json.loads((run_dir / "summary.json").read_text())["run_dir"]).parent.glob("cache/*/valid"))


def test_fp32_export_matches_recscale_eval(exported, tmp_path):
    run_dir, artifact, reference = exported
    out = tmp_path / "preds.parquet"
    assert predict_file(artifact, _valid_data(run_dir), out) == 1024
    p = pq.read_table(out).column("p_label").to_numpy()
    assert p.shape == reference["p"][:, 0].shape
    delta = np.abs(p - reference["p"][:, 0]).max()
    print(f"max |dp| vs recscale eval: {delta:.2e}")
    assert delta <= 1e-5, f"max |dp| {delta}"
    assert 0.01 < p.std()  # a trained model, not a constant


def test_manifest_and_feature_spec(exported):
    run_dir, artifact, reference = exported
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["step"] == reference["metrics"]["step"] == 8
    assert manifest["quantize"] == "none" and manifest["config"]["name"] == manifest["name"]
    assert manifest["metrics"]["auc"] == pytest.approx(reference["metrics"]["auc"], abs=1e-9)
    spec = json.loads((artifact / "features.json").read_text())
    assert [f["name"] for f in spec["sparse"]] == [f["name"] for f in manifest["config"]["data"]["features"]["sparse"]]
    assert spec["sparse"][0]["name"] == "user" and spec["sparse"][0]["rows"] == 20000


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "recscale" or name.startswith("recscale."):
            raise ImportError("recscale is not installed here")
sys.meta_path.insert(0, Block())
"""


def test_artifact_loads_without_recscale(exported, tmp_path):
    """``serve.py`` from the artifact scores rows in a process where ``import recscale`` fails."""
    run_dir, artifact, reference = exported
    out = tmp_path / "preds.parquet"
    script = BLOCKER + (
        f"sys.path.insert(0, {str(artifact)!r})\n"
        "try:\n    import recscale\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('recscale importable')\n"
        f"import serve\nprint(serve.predict_file({str(artifact)!r}, {str(_valid_data(run_dir))!r}, {str(out)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = pq.read_table(out).column("p_label").to_numpy()
    assert np.abs(p - reference["p"][:, 0]).max() <= 1e-5


def test_python_api_scores_a_dict_batch(exported):
    run_dir, artifact, reference = exported
    table = pq.read_table(sorted(_valid_data(run_dir).glob("*.parquet"))[0]).slice(0, 5)
    model = load(artifact)
    p = model.predict({name: table.column(name).to_pylist() for name in table.column_names})
    assert p.shape == (5, 1)
    assert np.abs(p[:, 0] - reference["p"][:5, 0]).max() <= 1e-5
    one = model.predict(table.slice(2, 1))  # batch 1 and empty bags take the same graph
    assert abs(float(one[0, 0]) - reference["p"][2, 0]) <= 1e-5


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recscale.launch.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_export_int8_then_predict(exported, tmp_path):
    run_dir, _, reference = exported
    if not run_dir.parent.name.startswith("dcnv2"):
        pytest.skip("the CLI path is the same for every model; run once")
    proc = _cli("export", str(run_dir), "--checkpoint", "8", "--out", str(tmp_path / "a"), "--quantize", "int8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["quantize"] == "int8"
    proc = _cli("predict", str(tmp_path / "a"), "--data", str(_valid_data(run_dir)), "--out", str(tmp_path / "p.pq"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = pq.read_table(tmp_path / "p.pq").column("p_label").to_numpy()
    assert 0 < np.abs(p - reference["p"][:, 0]).max() <= 5e-3  # int8 rows: close, not equal


def test_bad_input_is_one_line_naming_the_problem(exported, tmp_path):
    run_dir, artifact, _ = exported
    if not run_dir.parent.name.startswith("dcnv2"):
        pytest.skip("the checks are the runtime's, the same for every model")
    table = pq.read_table(sorted(_valid_data(run_dir).glob("*.parquet"))[0]).slice(0, 4)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.drop_columns(["item"]), bad)
    proc = _cli("predict", str(artifact), "--data", str(bad), "--out", str(tmp_path / "p.pq"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"recscale predict: error: {bad}: missing column 'item'"
    ids = table.column("user").to_pylist()
    ids[2] = 20000
    pq.write_table(table.set_column(table.column_names.index("user"), "user", [ids]), bad)
    message = f"{bad}: column 'user', row 2: id 20000 is outside table 't_user' (rows 0..19999) and hashing is 'none'"
    with pytest.raises(ServingError) as err:
        predict_file(artifact, bad, tmp_path / "p.pq")
    assert str(err.value) == message
    with pytest.raises(ValueError, match=r"step_00000003: no checkpoint at step 3$"):
        export_run(run_dir, "3", tmp_path / "x", "none")
    (tmp_path / "rows.csv").write_text("label,user\n1,3\n")
    with pytest.raises(ServingError, match=r"rows.csv: this model was not trained on data converted from CSV"):
        predict_file(artifact, tmp_path / "rows.csv", tmp_path / "p.pq")  # synthetic data: no converter recipe
    assert not (tmp_path / "p.pq").exists() and not (tmp_path / "x").exists()
