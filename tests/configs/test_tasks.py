"""``model.tasks``: labels filled from it, every mistake named by its key, regression labels read as values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recscale.configs import collect_problems, config_from_dict, load_config
from recscale.configs.tasks import resolve_tasks


def _problems(*overrides: str) -> str:
    return "\n".join(collect_problems(load_config("multitask_synthetic", list(overrides))))


def test_labels_come_from_the_tasks_when_left_out():
    cfg = config_from_dict(
        {
            "model": {
                "tasks": [
                    {"name": "click"},
                    {"name": "buy", "label": "purchase"},
                    {"name": "watch", "loss": "regression"},
                ]
            }
        }
    )
    assert cfg.data.features.labels == ["click", "purchase", "watch"]
    assert cfg.data.features.value_labels == ["watch"]
    assert [t.label for t in resolve_tasks(cfg)] == ["click", "purchase", "watch"]


def test_without_tasks_every_label_is_an_equal_bce_task():
    cfg = load_config("quickstart", ["data.features.labels=[click, buy]"])
    tasks = resolve_tasks(cfg)
    assert [(t.name, t.label, t.loss, t.weight) for t in tasks] == [
        ("click", "click", "bce", 1.0),
        ("buy", "buy", "bce", 1.0),
    ]


def test_the_multitask_presets_are_consistent():
    assert _problems() == ""
    assert collect_problems(load_config("ali_ccp")) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.tasks.1.given=clik"], "model.tasks[1] (purchase).given: no task named 'clik'; tasks: click, purchase"),
        (["model.tasks.1.name=click"], "model.tasks[1] (click).name: task name 'click' is used more than once"),
        (["model.tasks.0.weight=-1"], "model.tasks[0] (click).weight: expected a finite value >= 0, got -1"),
        (["model.tasks.0.name=a/b"], "model.tasks[0] (a/b).name: expected letters, digits"),
        (
            ["model.tasks.0.domains=[1]", "data.features.domain="],
            "model.tasks[0] (click).domains: per-domain tasks need",
        ),
        (
            ["data.features.labels=[click, buy]"],
            "data.features.labels: ['click', 'buy'] differ from the labels of model.tasks",
        ),
        (["model.tasks.0.given=click"], "model.tasks[0] (click).given: a task cannot be conditioned on itself"),
        (["trainer.early_stopping.metric=mse"], "trainer.early_stopping.metric: 'mse' needs a regression task"),
        (["model.teacher.miss_target=label"], "model.teacher.miss_target: label needs model.teacher.head: auxiliary"),
        (["model.teacher.adapter=true"], "model.teacher.adapter: the adapter's second head needs model.teacher.head"),
        (
            ["model.teacher.adapter_update=before"],
            "model.teacher.adapter_update: before needs model.teacher.adapter: true",
        ),
        (
            ["model.teacher.adapter_update=before", "sharding.dense=deepspeed"],
            "model.teacher.adapter_update: before needs sharding.dense: ddp",
        ),
        (["model.teacher.adapter_update=before", "model.teacher.adapter_lr=0"], "model.teacher.adapter_lr: expected a"),
    ],
)
def test_task_mistakes_name_the_key(overrides, message):
    assert message in _problems(*overrides)


def test_regression_labels_are_read_as_values_and_checked_for_finiteness(tmp_path):
    from recscale.data.decode import BadRowCounter, DecodeSpec, RowLocation, decode
    from recscale.data.errors import DataError

    cfg = config_from_dict(
        {
            "model": {"tasks": [{"name": "click"}, {"name": "watch", "loss": "regression"}]},
            "data": {"features": {"sparse": [{"name": "item", "table": "t"}]}},
            "embeddings": {"tables": [{"name": "t", "num_embeddings": 10}]},
        }
    )
    spec = DecodeSpec(features=cfg.data.features, rows={"t": 10}, skip_bad_rows=False, with_oracle=False)
    table = pa.table({"click": [0, 1], "watch": [3.5, 120.0], "item": [1, 2]})
    columns = decode(table, spec, RowLocation("f.parquet", 0, 0), BadRowCounter())
    assert np.array_equal(columns.labels, np.array([[0, 3.5], [1, 120.0]], dtype=np.float32))
    bad = pa.table({"click": [0, 1], "watch": [3.5, float("nan")], "item": [1, 2]})
    with pytest.raises(DataError, match="watch.*not finite"):
        decode(bad, spec, RowLocation("f.parquet", 0, 0), BadRowCounter())
    not_binary = pa.table({"click": [0, 2], "watch": [1.0, 2.0], "item": [1, 2]})
    with pytest.raises(DataError, match="click.*not 0 or 1"):
        decode(not_binary, spec, RowLocation("f.parquet", 0, 0), BadRowCounter())


def test_a_teacher_column_reads_nulls_as_misses_and_refuses_a_wrong_arity():
    from recscale.data.decode import BadRowCounter, DecodeSpec, RowLocation, decode
    from recscale.data.errors import DataError

    cfg = config_from_dict(
        {
            "model": {"tasks": [{"name": "click"}, {"name": "buy"}]},
            "data": {"features": {"sparse": [{"name": "item", "table": "t"}], "teacher": "z"}},
            "embeddings": {"tables": [{"name": "t", "num_embeddings": 10}]},
        }
    )
    spec = DecodeSpec(features=cfg.data.features, rows={"t": 10}, skip_bad_rows=False, with_oracle=False)
    z = pa.array([[0.5, -1.0], None, [2.0, 3.0]], type=pa.list_(pa.float32()))
    table = pa.table({"click": [0, 1, 1], "buy": [0, 0, 1], "item": [1, 2, 3], "z": z})
    got = decode(table, spec, RowLocation("f.parquet", 0, 0), BadRowCounter()).teacher
    assert np.array_equal(got, np.array([[0.5, -1.0], [np.nan, np.nan], [2.0, 3.0]], dtype=np.float32), equal_nan=True)
    short = table.set_column(3, "z", pa.array([[0.5], None, [2.0, 3.0]], type=pa.list_(pa.float32())))
    with pytest.raises(DataError, match=r"'z'.*teacher logits for 2 tasks expected|z.*2 tasks"):
        decode(short, spec, RowLocation("f.parquet", 0, 0), BadRowCounter())
