"""Config loading, overrides and validation: every bad config fails early with its key path."""

from __future__ import annotations

import pytest
import yaml

from recscale.configs import ConfigError, config_to_dict, list_presets, load_config, validate
from recscale.configs.loader import apply_overrides, config_from_dict, read_yaml, resolve_config_path
from recscale.trainer.job import check_job


def write(tmp_path, data, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def quickstart_dict():
    return read_yaml(resolve_config_path("quickstart"))


# ------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    world = cfg.launch.nproc_per_node * cfg.launch.nnodes
    check_job(cfg, world, None)


def test_preset_name_and_path_are_equivalent(tmp_path):
    by_name = load_config("quickstart")
    by_path = load_config(str(resolve_config_path("quickstart")))
    assert config_to_dict(by_name) == config_to_dict(by_path)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'quickstart'"):
        load_config("quickstrat")


def test_extends_merges_sections(tmp_path):
    base = resolve_config_path("quickstart")
    path = write(tmp_path, {"extends": str(base), "trainer": {"batch_size": 256}, "name": "child"})
    cfg = load_config(str(path))
    assert cfg.trainer.batch_size == 256
    assert cfg.name == "child"
    assert cfg.trainer.eval_every == load_config("quickstart").trainer.eval_every  # inherited


def test_extends_loop_is_reported(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="'extends' loops"):
        load_config(str(a))


# ---------------------------------------------------------------------------------- overrides


def test_override_is_type_checked_and_applied():
    cfg = load_config("quickstart", ["trainer.batch_size=4096", "model.dcnv2.low_rank=8"])
    assert cfg.trainer.batch_size == 4096
    assert cfg.model.dcnv2.low_rank == 8


def test_override_with_a_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"trainer.batch_size: expected an integer, got 'big' \(str\)"):
        load_config("quickstart", ["trainer.batch_size=big"])


def test_override_indexes_lists():
    cfg = load_config("quickstart", ["embeddings.tables.1.num_embeddings=77"])
    assert cfg.embeddings.tables[1].num_embeddings == 77


def test_override_bad_list_index():
    with pytest.raises(ConfigError, match="needs a list index in 0..7"):
        load_config("quickstart", ["embeddings.tables.99.num_embeddings=1"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["trainer.batch_size"])


def test_int_is_accepted_for_float_but_not_bool_for_int():
    cfg = load_config("quickstart", ["optimizer.dense.lr=1"])
    assert cfg.optimizer.dense.lr == 1.0 and isinstance(cfg.optimizer.dense.lr, float)
    with pytest.raises(ConfigError, match="trainer.batch_size: expected an integer, got True"):
        load_config("quickstart", ["trainer.batch_size=true"])


# ------------------------------------------------------------------------ unknown keys, types


def test_unknown_key_names_path_and_suggests(tmp_path):
    raw = quickstart_dict()
    raw["trainer"]["batch_sise"] = 12
    with pytest.raises(ConfigError, match="trainer.batch_sise: unknown key; did you mean 'batch_size'"):
        config_from_dict(raw)


def test_unknown_section():
    with pytest.raises(ConfigError, match="trainr: unknown key; did you mean 'trainer'"):
        config_from_dict({"trainr": {}})


def test_bad_literal_lists_the_options():
    with pytest.raises(ConfigError, match=r"sharding.dense: expected one of 'ddp' \| 'deepspeed', got 'fsdp'"):
        load_config("quickstart", ["sharding.dense=fsdp"])


def test_missing_required_key():
    raw = quickstart_dict()
    del raw["embeddings"]["tables"][0]["num_embeddings"]
    with pytest.raises(ConfigError, match=r"embeddings.tables\[0\].num_embeddings: required key is missing"):
        config_from_dict(raw)


# --------------------------------------------------------------------------- impossible values


def problems_of(overrides, world=2):
    cfg = load_config("quickstart", overrides)
    with pytest.raises(ConfigError) as err:
        check_job(cfg, world, "cpu")
    return str(err.value)


def test_table_with_zero_rows():
    msg = problems_of(["embeddings.tables.0.num_embeddings=0"])
    assert "embeddings.tables[0] (t_user).num_embeddings: expected at least 1 row, got 0" in msg


def test_batch_not_divisible_by_world_size():
    msg = problems_of(["trainer.batch_size=1000"], world=3)
    assert "trainer.batch_size: 1000 is not divisible by the world size 3" in msg


def test_ep_size_not_dividing_world_size():
    msg = problems_of(["sharding.dense=deepspeed", "sharding.ep_size=4"], world=6)
    assert "sharding.ep_size: 4 does not divide the world size 6" in msg


def test_ep_size_needs_deepspeed():
    msg = problems_of(["sharding.ep_size=2"])
    assert "sharding.ep_size: expert parallelism (2) needs sharding.dense: deepspeed" in msg


def test_feature_pointing_at_a_missing_table():
    msg = problems_of(["data.features.sparse.0.table=t_nope"])
    assert "data.features.sparse[0] (user).table: no table named 't_nope'" in msg


def test_cpu_rejects_gpu_only_sparse_optimizer():
    msg = problems_of(["optimizer.sparse.name=adam"])
    assert "optimizer.sparse.name: 'adam' has no CPU kernel in FBGEMM" in msg


def test_manual_plan_must_list_every_table():
    msg = problems_of(["sharding.manual={t_user: {type: row_wise}}"])
    assert "sharding.manual: table 't_item' is missing" in msg


def test_unknown_architecture():
    msg = problems_of(["model.arch=transformer"])
    assert "model.arch: unknown architecture 'transformer'" in msg


def test_dlrm_bottom_mlp_must_end_at_the_embedding_dim():
    msg = problems_of(["model.arch=dlrm", "model.dense_arch=[32, 8]"])
    assert "model.dense_arch: dlrm's bottom MLP must end at the embedding dim 16, got 8" in msg


def test_all_problems_are_reported_together():
    msg = problems_of(["embeddings.tables.0.num_embeddings=0", "trainer.batch_size=1001"])
    assert "num_embeddings" in msg and "batch_size" in msg


def test_valid_config_passes():
    validate(load_config("quickstart"), world_size=2, device="cpu")
