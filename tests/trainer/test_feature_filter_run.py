"""``recscale features select`` on a small trained two-task run with planted useless features.

The data plants three useless sparse features and one useless dense column (``data.synthetic.useless_features``)
beside user, item, ``a`` and two dense columns that both tasks' labels depend on. The permutation importance
of the useless ones must be about 0 and of the strong useful ones clearly positive; the Filter keeps exactly
the useful ones, and the config it writes loads, validates and reads the run's own rows.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml

from recscale.configs import load_config, validate
from recscale.data.prepare import prepare_data
from recscale.launch.cli import main
from recscale.serving.export import resolve_checkpoint
from tests.distributed import run_distributed
from tests.trainer.runs import final_eval, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed]

USEFUL = ["user", "item", "a", "d0", "d1"]
USELESS = ["z0", "z1", "z2", "dz"]
PLANTED = {
    "name": "planted_filter",
    "seed": 0,
    "data": {
        "source": "synthetic",
        "features": {
            "dense": ["d0", "d1", "dz"],
            "sparse": [{"name": n, "table": f"t_{n}"} for n in ("user", "item", "a", "z0", "z1", "z2")],
            "oracle": "true_prob",
        },
        "synthetic": {
            "click_rate": 0.3,
            "id_effect_scale": 1.0,
            "interaction_scale": 0.0,
            "dense_scale": 1.0,
            "useless_features": USELESS,
        },
    },
    "embeddings": {
        "dim": 8,
        "tables": [{"name": f"t_{n}", "num_embeddings": 16} for n in ("user", "item", "a", "z0", "z1", "z2")],
    },
    "model": {
        "arch": "dcnv2",
        "dense_arch": [],
        "over_arch": [32],
        "dcnv2": {"num_cross_layers": 1, "low_rank": 8},
        "tasks": [{"name": "click", "weight": 1.0}, {"name": "like", "weight": 0.5}],
    },
    "sharding": {"dense": "ddp"},
    "optimizer": {"dense": {"name": "adam", "lr": 0.01}, "sparse": {"name": "rowwise_adagrad", "lr": 0.1}},
    "trainer": {"batch_size": 384, "device": "cpu"},
}


ARGS = ["--budget", "5", "--weights", "click=1,like=0.2"]


def one_rank_worker(rank: int, world: int, argv: list[str]) -> int:
    """``run_distributed`` worker: the per-rank main of ``features select`` (what torchrun runs), one rank."""
    from recscale.launch.features_entrypoint import main as rank_main

    return rank_main(argv)


def select(argv: list[str]) -> tuple[int, str]:
    """``recscale ARGV`` in this process (its ranks are torchrun's); its exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """The run, and the Filter on one rank (the per-rank main in a spawned process: no torchrun start-up)."""
    root = tmp_path_factory.mktemp("filter")
    preset = root / "planted.yaml"
    preset.write_text(yaml.safe_dump(PLANTED))
    cfg = small_job(root / "cache", preset=str(preset))
    run_dir = new_run(root, "run", cfg)
    run_distributed(train_worker, 1, cfg, run_dir, False)
    checkpoint = resolve_checkpoint(run_dir, "latest")
    argv = ["--run-dir", str(run_dir), "--checkpoint", str(checkpoint), "--out", str(root / "result.json"), *ARGS]
    argv += ["--json", str(root / "filter.json"), "--selected", str(root / "selected.yaml")]
    [code] = run_distributed(one_rank_worker, 1, argv)
    return root, run_dir, code, json.loads((root / "filter.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(selected):
    """``recscale features select --nproc 2`` (torchrun, 2 gloo ranks) on the same run and arguments."""
    root, run_dir, _, _ = selected
    argv = ["features", "select", str(run_dir), *ARGS, "--nproc", "2"]
    code, stdout = select(argv + ["--json", str(root / "filter2.json"), "--out", str(root / "selected2.yaml")])
    return code, stdout, json.loads((root / "filter2.json").read_text())


def test_two_ranks_give_the_one_rank_importances_and_selection(selected, two_ranks):
    """Same rows, same permutations: each of 2 ranks evaluates half of every batch (the last one half padding)."""
    root, _, _, one = selected
    code, _, two = two_ranks
    assert code == 0
    assert two["intact"] == {t: pytest.approx(v, rel=1e-6) for t, v in one["intact"].items()}
    for name, per_task in one["importance"].items():
        for task, entry in per_task.items():
            for key in ("mean", "std"):  # only the order of sums differs (2e-16 measured on CPU)
                assert two["importance"][name][task][key] == pytest.approx(entry[key], abs=1e-6), (name, task, key)
    assert two["fronts"] == one["fronts"]
    assert two["filter"] == one["filter"] and two["weighted_sum"] == one["weighted_sum"]
    selected_two = yaml.safe_load((root / "selected2.yaml").read_text())
    assert selected_two == yaml.safe_load((root / "selected.yaml").read_text())


def test_useless_features_score_about_zero_and_strong_useful_ones_clearly_more(selected):
    _, run_dir, code, result = selected
    assert code == 0
    assert result["tasks"] == ["click", "like"] and result["metrics"] == ["ne/click", "ne/like"]
    last = final_eval(run_dir)  # the intact pass is the run's own last evaluation of the same checkpoint
    assert result["intact"] == {t: pytest.approx(last[f"ne/{t}"], rel=1e-6) for t in ("click", "like")}
    imp = result["importance"]
    assert list(imp) == ["user", "item", "a", "z0", "z1", "z2", "d0", "d1", "dz"]
    for name in USELESS:
        for task in ("click", "like"):
            assert imp[name][task]["value"] < 0.005, (name, task, imp[name][task])
            assert abs(imp[name][task]["mean"]) < 0.01
    for name in ("user", "a", "d0"):
        assert min(imp[name][t]["value"] for t in ("click", "like")) > 0.03, (name, imp[name])
    assert all(imp[n][t]["std"] > 0 for n in USEFUL for t in ("click", "like"))
    assert sorted(result["filter"]["kept"]) == sorted(USEFUL)
    assert sorted(result["filter"]["dropped"]) == sorted(USELESS)
    assert result["weights"] == {"click": 1.0, "like": 0.2}


def test_the_console_shows_the_ranking_the_fronts_and_both_selections(two_ranks):
    _, stdout, result = two_ranks
    assert "importance: rise of each task's NE" in stdout
    assert "fronts: 1: " in stdout
    assert f"filter keeps 5 of 9 (budget 5): {', '.join(result['filter']['kept'])}" in stdout
    assert "weighted sum (click=1, like=0.2) keeps: " in stdout


def test_the_written_config_loads_validates_and_reads_the_runs_rows(selected):
    root, run_dir, _, result = selected
    cfg = load_config(str(root / "selected.yaml"))
    validate(cfg)
    assert [s.name for s in cfg.data.features.sparse] == ["user", "item", "a"]
    assert cfg.data.features.dense == ["d0", "d1"]
    assert [t.name for t in cfg.embeddings.tables] == ["t_user", "t_item", "t_a"]
    run_cfg = load_config(str(run_dir / "config.yaml"))
    original = prepare_data(run_cfg.data, run_cfg.embeddings)
    assert cfg.data.source == "parquet" and cfg.data.valid_path == str(original.valid.resolve())
    assert prepare_data(cfg.data, cfg.embeddings).train == original.train.resolve()
    assert result["config"] == str(root / "selected.yaml")


def test_bad_input_is_one_line_and_a_nonzero_exit(selected, tmp_path, capsys):
    root, run_dir, _, _ = selected
    cases = [
        ([str(tmp_path / "nope")], "no such run directory"),
        ([str(run_dir), "--budget", "10"], "--budget 10: expected 1..9"),
        ([str(run_dir), "--budget", "0"], "--budget 0: expected 1..9"),
        ([str(run_dir), "--budget", "-2"], "--budget -2: expected 1..9"),
        ([str(run_dir), "--checkpoint", "7"], "no checkpoint at step 7"),
        ([str(run_dir), "--weights", "click=1"], "no weight for like"),
        ([str(run_dir), "--nproc", "0"], "--nproc 0: expected at least 1 rank"),
        ([str(run_dir), "--nproc", "5"], "--batch-size 384 (trainer.batch_size): expected a multiple of --nproc 5"),
    ]
    empty = new_run(tmp_path, "untrained", load_config(str(run_dir / "config.yaml")))
    cases.append(([str(empty)], "has no complete checkpoint"))
    for args, message in cases:
        assert main(["features", "select", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("recscale features: error: ")
