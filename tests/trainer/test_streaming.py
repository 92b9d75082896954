"""Streaming training: periods in order, each scored before it is trained on; exact resume inside a period on
2 ranks; the progressive scores kept as predictions and joined to data as a teacher column."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from recscale.configs import load_config, validate
from recscale.configs.loader import ConfigError
from recscale.data.errors import DataError
from recscale.data.prepare import prepare_data
from recscale.data.teacher_join import attach_teacher
from recscale.data.zipper import build_zipper
from recscale.launch import data_cli
from recscale.reports.report import write_report
from recscale.trainer.streaming import PREDICTIONS, make_streaming_data
from tests.distributed import run_distributed
from tests.trainer.runs import SMALL, losses, new_run, small_job, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STREAM = [
    "data.synthetic.partition_by_day=true",
    "data.synthetic.seconds_per_row=100",  # 864 rows a day: days 0..3 of 3,072 rows
    "trainer.streaming.enabled=true",
    "trainer.streaming.predictions=true",
    "trainer.epochs=1",
]


COLUMN = "label"
"""The kept scores' column: the task's name (quickstart's one task is named after its label)."""


def _records(run_dir, kind):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if f'"kind": "{kind}"' in x]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    cfg = small_job(root / "cache", *STREAM, "checkpoint.every_steps=3")
    run_dir = new_run(root, "full", cfg)
    # 192 rows per rank and step, the tail dropped: 432 rows per rank a day -> 2 steps; the last day 1
    assert run_distributed(train_worker, 2, cfg, run_dir, False) == [7, 7]
    return cfg, run_dir, root


def test_each_period_is_scored_by_the_model_of_the_earlier_ones(streamed):
    cfg, run_dir, _ = streamed
    paths = prepare_data(cfg.data, cfg.embeddings)
    days = sorted(p.name for p in paths.train.iterdir())
    assert days == ["day=00000", "day=00001", "day=00002", "day=00003"]
    rows = [sum(pq.read_metadata(f).num_rows for f in (paths.train / d).glob("*.parquet")) for d in days]
    assert rows == [864, 864, 864, 480]
    progressive = _records(run_dir, "progressive")
    assert [r["period"] for r in progressive] == days[1:]
    assert [r["step"] for r in progressive] == [2, 4, 6]  # each scored right after the period before it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["streaming"]["periods"] == days
    assert summary["streaming"]["mean_ne"] == pytest.approx(np.mean([r["ne"] for r in progressive]))
    html = write_report([run_dir]).read_text()
    assert "Progressive validation by period" in html and all(d in html for d in days[1:])
    # the kept scores are the scores the metrics came from, in the period's row order
    for record in progressive:
        parts = sorted((run_dir / PREDICTIONS / record["period"]).glob("rank*.parquet"))
        assert len(parts) == 2
        logits = pa.concat_tables([pq.read_table(p) for p in parts])[COLUMN].to_numpy()
        labels = pq.read_table(paths.train / record["period"])["label"].to_numpy()
        assert len(logits) == len(labels) == record["num_examples"]
        assert roc_auc_score(labels, logits) == pytest.approx(record["auc"], abs=1e-9)


def test_a_resumed_streaming_run_continues_inside_a_period_bit_exactly(streamed):
    cfg, full, root = streamed
    resumed = new_run(root, "resumed", cfg)
    steps = sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.startswith("step_"))
    first = steps[0]  # step 3: inside the second period (steps 3-4)
    shutil.copytree(full / "checkpoints" / first, resumed / "checkpoints" / first)
    run_distributed(train_worker, 2, cfg, resumed, True)
    expected, got = losses(full), losses(resumed)
    start = int(first.split("_")[1]) + 1
    assert sorted(got) == list(range(start, 8))
    assert [got[s] for s in got] == [expected[s] for s in got]
    scored = {r["period"]: r["ne"] for r in _records(resumed, "progressive")}
    assert sorted(scored) == ["day=00002", "day=00003"]  # the periods after the resume point
    assert scored == {r["period"]: r["ne"] for r in _records(full, "progressive") if r["period"] in scored}


def test_attach_teacher_joins_the_scores_row_by_row_and_keeps_one_domain(streamed, tmp_path):
    cfg, run_dir, _ = streamed
    paths = prepare_data(cfg.data, cfg.embeddings)
    out = tmp_path / "joined"
    result = attach_teacher(paths.train.parent, run_dir / PREDICTIONS, out)
    assert result.rows["train"] == 3072 and result.scored["train"] == 3072 - 864  # day 0 has no scores
    # the teacher's quality on the joined rows is its own progressive validation of each period
    progressive = {r["period"]: r for r in _records(run_dir, "progressive")}
    by_period = result.teacher[COLUMN]["by_period"]
    assert sorted(by_period) == sorted(progressive)
    for day, quality in by_period.items():
        assert quality["rows"] == progressive[day]["num_examples"]
        assert quality["ne"] == pytest.approx(progressive[day]["ne"], rel=1e-5)
        assert quality["calibration"] == pytest.approx(progressive[day]["calibration"], rel=1e-5)
    assert result.teacher[COLUMN]["mean_ne"] == pytest.approx(np.mean([r["ne"] for r in progressive.values()]))
    for day in ("day=00000", "day=00002"):
        joined = pq.read_table(out / "train" / day)
        source = pq.read_table(paths.train / day)
        assert joined["label"].to_pylist() == source["label"].to_pylist()
        if day == "day=00000":
            assert joined["teacher"].null_count == joined.num_rows
        else:
            kept = pa.concat_tables([pq.read_table(p) for p in sorted((run_dir / PREDICTIONS / day).glob("*"))])
            np.testing.assert_array_equal(joined["teacher"].to_numpy(), kept[COLUMN].to_numpy())
    assert pq.read_table(out / "valid")["teacher"].null_count == result.rows["valid"]
    with pytest.raises(DataError, match="already exists"):
        attach_teacher(paths.train.parent, run_dir / PREDICTIONS, out)
    # a domain column added by hand: only its rows stay
    day = tmp_path / "one" / "train" / "day=00001"
    day.mkdir(parents=True)
    table = pq.read_table(paths.train / "day=00001")
    table = table.append_column("domain", pa.array(np.arange(table.num_rows) % 3))
    pq.write_table(table, day / "part-00000.parquet")
    kept = attach_teacher(
        tmp_path / "one", run_dir / PREDICTIONS, tmp_path / "one_d1", domain_column="domain", domain=1
    )
    assert kept.rows["train"] == 288
    joined = pq.read_table(tmp_path / "one_d1" / "train")
    full_scores = pa.concat_tables([pq.read_table(p) for p in sorted((run_dir / PREDICTIONS / "day=00001").glob("*"))])
    np.testing.assert_array_equal(joined["teacher"].to_numpy(), full_scores[COLUMN].to_numpy()[1::3])
    # its quality is measured on the kept domain's rows only
    y, p = joined["label"].to_numpy(), 1 / (1 + np.exp(-joined["teacher"].to_numpy().astype(np.float64)))
    rate = y.mean()
    expected = log_loss(y, p) / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert kept.teacher[COLUMN]["by_period"]["day=00001"]["ne"] == pytest.approx(expected, rel=1e-6)
    # a recscale predict output over train/ (probabilities, rows in file order) joins as logits
    logits = np.linspace(-3, 3, 3072)
    pq.write_table(pa.table({"p_label": 1 / (1 + np.exp(-logits))}), tmp_path / "scored.parquet")
    flat = attach_teacher(paths.train.parent, tmp_path / "scored.parquet", tmp_path / "from_predict")
    assert flat.scored["train"] == 3072
    joined = pq.read_table(tmp_path / "from_predict" / "train" / "day=00003")["teacher"].to_numpy()
    np.testing.assert_allclose(joined, logits[-480:], atol=1e-5)
    short = tmp_path / "short" / "train" / "day=00001"
    short.mkdir(parents=True)
    pq.write_table(table.slice(0, 100), short / "part-00000.parquet")
    with pytest.raises(DataError, match="864 rows of period day=00001"):
        attach_teacher(tmp_path / "short", run_dir / PREDICTIONS, tmp_path / "short_out")


def test_the_attach_teacher_command_prints_the_join_and_the_teachers_ne_on_the_rows(streamed, tmp_path, capsys):
    cfg, run_dir, _ = streamed
    paths = prepare_data(cfg.data, cfg.embeddings)
    parser = argparse.ArgumentParser(prog="recscale")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "joined"
    args = parser.parse_args(
        ["data", "attach-teacher", str(paths.train.parent), "--predictions", str(run_dir), "--out", str(out)]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["rows_with_a_teacher_score"]["train"] == 3072 - 864
    progressive = _records(run_dir, "progressive")
    mean_ne = report["teacher_on_these_rows"][COLUMN]["mean_ne"]
    assert mean_ne == pytest.approx(np.mean([r["ne"] for r in progressive]), rel=1e-5)
    assert f"the teacher's mean NE on these rows ({COLUMN}): {mean_ne:.4f}" in printed.err
    assert "model.teacher.head=auxiliary" in printed.err and (out / "train" / "day=00003").is_dir()


def test_a_short_first_period_is_refused_or_skipped_by_choice(streamed, tmp_path):
    """A stream that starts part-way through its first day: refused, naming the option; with
    ``trainer.streaming.skip_short_first`` that day is left out and listed, and the rest streams as usual."""
    cfg, _, _ = streamed
    paths = prepare_data(cfg.data, cfg.embeddings)
    train = tmp_path / "late_start" / "train"
    for day in sorted(paths.train.iterdir()):
        (train / day.name).mkdir(parents=True)
        table = pq.read_table(day)
        pq.write_table(table.slice(0, 100) if day.name == "day=00000" else table, train / day.name / "part.parquet")
    job = ["data.source=parquet", f"data.train_path={train}", f"data.valid_path={paths.valid}"]
    refused = load_config("quickstart", [*SMALL, *STREAM, *job])
    with pytest.raises(ValueError, match=r"day=00000: .*100 training rows .*skip_short_first=true"):
        make_streaming_data(refused, train, str(paths.valid), 0, 2, 192, False)
    skipping = load_config("quickstart", [*SMALL, *STREAM, *job, "trainer.streaming.skip_short_first=true"])
    run_dir = new_run(tmp_path, "skipping", skipping)
    assert run_distributed(train_worker, 2, skipping, run_dir, False) == [5, 5]  # 2 + 2 + 1 steps, days 1-3
    summary = json.loads((run_dir / "summary.json").read_text())["streaming"]
    assert summary["skipped"] == ["day=00000"]
    assert summary["periods"] == ["day=00001", "day=00002", "day=00003"]
    assert [r["period"] for r in summary["progressive"]] == ["day=00002", "day=00003"]
    assert "Left out as too short for one step (trainer.streaming.skip_short_first): day=00000" in (
        write_report([run_dir]).read_text()
    )


def test_streaming_settings_that_cannot_work_are_refused_by_key(tmp_path):
    base = [f"data.cache_dir={tmp_path}", "trainer.streaming.enabled=true"]
    with pytest.raises(ConfigError, match="data.synthetic.partition_by_day"):
        validate(load_config("quickstart", base))
    with pytest.raises(ConfigError, match="trainer.streaming.passes"):
        validate(
            load_config("quickstart", [*base, "data.synthetic.partition_by_day=true", "trainer.streaming.passes=0"])
        )
    stages = "trainer.stages=[{name: a, steps: 2}]"
    with pytest.raises(ConfigError, match="trainer.stages"):
        validate(load_config("quickstart", [*base, STREAM[0], stages]))


def test_partitioned_generation_writes_the_same_rows_one_folder_per_day(tmp_path):
    flat = small_job(tmp_path / "a", "data.synthetic.seconds_per_row=100")
    daily = small_job(tmp_path / "b", *STREAM[:2])
    a = pq.read_table(prepare_data(flat.data, flat.embeddings).train)
    b = pq.read_table(prepare_data(daily.data, daily.embeddings).train).drop_columns(["day"])
    assert b.num_rows == a.num_rows == 3072
    assert b.select(a.column_names).equals(a)


def _train_recording_the_adapter(rank: int, world: int, cfg, run_dir) -> list:
    """``train_worker`` that also returns the adapter's parameters after each of its own steps."""
    import torch

    from recscale.modules.distillation import StudentAdapter
    from recscale.trainer.loop import train

    seen, original = [], StudentAdapter.own_step

    def recording(self, *args):
        original(self, *args)
        seen.append(torch.cat([p.detach().reshape(-1) for p in self.parameters()]).clone())

    StudentAdapter.own_step = recording
    try:
        train(cfg, run_dir)
    finally:
        StudentAdapter.own_step = original
    return seen


def test_a_student_streams_with_an_auxiliary_head_and_adapter_on_2_ranks_and_resumes_bit_exactly(streamed, tmp_path):
    """The adapter steps itself first (``adapter_update: before``, an all-reduce in the forward pass); its Adam
    moments are checkpointed with the model, so a run resumed inside a period repeats the losses bit for bit."""
    cfg, run_dir, root = streamed
    paths = prepare_data(cfg.data, cfg.embeddings)
    data = tmp_path / "student_data"
    attach_teacher(paths.train.parent, run_dir / PREDICTIONS, data)
    student = small_job(
        root / "cache",
        *STREAM[:4],
        "trainer.epochs=1",
        "data.source=parquet",
        f"data.train_path={data / 'train'}",
        f"data.valid_path={data / 'valid'}",
        "data.features.teacher=teacher",
        "model.teacher.as_feature=false",
        "model.teacher.head=auxiliary",
        "model.teacher.adapter=true",
        "model.teacher.adapter_update=before",
        "model.teacher.adapter_lr=0.01",
        "model.teacher.grad_scale=2.0",
        "checkpoint.every_steps=3",
        "checkpoint.at_end=false",
    )
    out = new_run(tmp_path, "student", student)
    adapters = run_distributed(_train_recording_the_adapter, 2, student, out)
    assert len(adapters[0]) == len(adapters[1]) == 7
    # the ranks average the adapter's gradient (parallelize() installs it): the same adapter after every step
    assert all(a.equal(b) for a, b in zip(*adapters)) and not adapters[0][0].equal(adapters[0][-1])
    summary = json.loads((out / "summary.json").read_text())
    assert {"distill_heads", "adapter"} <= set(summary["flops_breakdown"])
    assert [r["period"] for r in summary["streaming"]["progressive"]] == ["day=00001", "day=00002", "day=00003"]
    full = losses(out)
    assert all(math.isfinite(x) for x in full.values())
    resumed = new_run(tmp_path, "resumed", student)
    shutil.copytree(out / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    run_distributed(train_worker, 2, student, resumed, True)
    got = losses(resumed)
    assert sorted(got) == [4, 5, 6, 7] and all(got[s] == full[s] for s in got)


def test_a_zipper_build_in_arrival_order_streams_day_by_day_on_2_ranks(tmp_path):
    """``data.zipper.order: arrival`` writes the layout ``trainer.streaming`` trains on: each arrival day is a
    period, scored and then trained on in time order, its windows mixed."""
    shrink = [
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.synthetic.num_train=8000",
        "data.synthetic.num_valid=500",
        "data.synthetic.seconds_per_row=108",  # 800 impressions a day, 10 days
        "data.zipper.order=arrival",
    ]
    built = load_config("zipper_synthetic", [*shrink, "data.source=synthetic"])
    paths = prepare_data(built.data, built.embeddings)
    record = build_zipper(built.data, paths.train, paths.valid, tmp_path / "z")
    days = sorted(p.name for p in (tmp_path / "z" / "train").iterdir())
    assert len(days) == 9 and record["order"] == "arrival"  # labels known on days 1..9 before NOW
    counts = [pq.read_metadata(next((tmp_path / "z" / "train" / d).glob("*.parquet"))).num_rows for d in days]
    assert min(counts) >= 800 // 3 * 0.8  # no short day: the first holds day 0's 1-day rows, whole
    job = [
        *shrink,
        "data.source=parquet",
        f"data.train_path={tmp_path / 'z' / 'train'}",
        f"data.valid_path={tmp_path / 'z' / 'valid'}",
        "trainer.streaming.enabled=true",
        "trainer.batch_size=64",
        "trainer.log_every=100",
        "metrics.tensorboard=false",
        "metrics.progress_bar=never",
        "checkpoint.every_steps=0",
    ]
    cfg = load_config("zipper_synthetic", job)
    run_dir = new_run(tmp_path, "run", cfg)
    steps = run_distributed(train_worker, 2, cfg, run_dir, False)
    progressive = _records(run_dir, "progressive")
    assert [r["period"] for r in progressive] == days[1:]
    for i, day in enumerate(days):
        windows = set(pq.read_table(tmp_path / "z" / "train" / day)["zipper_window"].to_numpy().tolist())
        assert windows == ({0, 1, 2} if i >= 6 else {0, 1} if i >= 2 else {0})  # 7-day labels from day 7 on
    assert [r["num_examples"] for r in progressive] == counts[1:]
    # each day is split between the ranks and cut into whole steps of 32 rows a rank (the tail dropped)
    assert steps == [sum(n // 2 // 32 for n in counts)] * 2
