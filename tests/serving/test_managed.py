"""Managed-collision tables in the artifact: raw ids -> the slots training's evaluation gives them.

``managed_slots`` (serve.py) against ``ManagedIds`` itself on edge ids (negative, past ``input_hash_size``,
int64's ends); the raw CSV path (``remap: raw``) against the converter's Parquet, bit for bit; and a real
1-process quickstart run whose ``t_user`` (20,000 ids in the data) has 256 managed slots, exported and
scored: the artifact's predictions equal ``recscale eval``'s, and an id never seen reads the shared slot.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs.schema.model import ManagedCollisionConfig
from recscale.data import convert_csv
from recscale.modules.managed_ids import ManagedIds
from recscale.serving import load, predict_file
from recscale.serving.export import copy_vocabularies, export_run, feature_spec
from recscale.serving.runtime import managed_slots, raw_batches
from tests.data.test_managed_ids import INT_USERS, USERS, converter_config, write_csv
from tests.distributed import run_distributed
from tests.serving.helpers import eval_predictions
from tests.trainer.runs import managed_job, new_run, train_worker

I64 = torch.iinfo(torch.int64)


def _kjt(ids: list[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=["f"], values=torch.tensor(ids, dtype=torch.int64), lengths=torch.ones(len(ids), dtype=torch.int64)
    )


@pytest.mark.parametrize("input_hash_size", [1000, 2**63 - 1])
def test_slots_equal_the_training_remapper_on_edge_ids(input_hash_size):
    managed = ManagedIds(
        {"t": (ManagedCollisionConfig(eviction_interval=1, input_hash_size=input_hash_size), 8)},
        {"t": ["f"]},
        device=torch.device("cpu"),
    )
    managed.train()
    seen = [3, -5, 1005, 12, 40, 41, 42, 43, 44, 45, 46, 47, 3, 12, -5]  # 12 distinct raw ids for 8 slots
    managed(_kjt(seen))
    managed.eval()
    queries = [*seen, 0, -1, 995, 2005, 999_999, I64.min, I64.max, I64.max - 1, 2**62 + 7, -(2**40)]
    expected = managed(_kjt(queries)).values().numpy()
    ids, slots = managed.slot_map("t")
    got = managed_slots(np.array(queries, dtype=np.int64), (ids.numpy(), slots.numpy()), 8, input_hash_size)
    assert got.tolist() == expected.tolist()
    assert 0 < len(ids) <= 8 and (got == 7).any() and (got != 7).any()  # admitted and shared-slot ids both


@pytest.mark.parametrize("categorical, users", [("integer", INT_USERS), ("vocab", USERS)])
def test_raw_csv_ids_are_the_converters_bit_for_bit(tmp_path, categorical, users):
    write_csv(tmp_path / "train.csv", users)
    cfg = converter_config(tmp_path, categorical)
    convert_csv([tmp_path / "train.csv"], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    (tmp_path / "artifact").mkdir()
    copy_vocabularies(cfg, tmp_path / "artifact")  # as recscale export does: none for the raw ids
    vocab = sorted(p.name for p in (tmp_path / "artifact").glob("vocab/*"))
    assert vocab == (["item.npz"] if categorical == "vocab" else [])
    features = feature_spec(cfg)
    assert features["raw"]["remap"]["user"]["remap"] == "raw"
    blocks = list(raw_batches(tmp_path / "train.csv", tmp_path / "artifact", features, block_mb=1))
    got = np.concatenate([b["user"] for b, _ in blocks])
    converted = pq.read_table(tmp_path / "out" / "train").column("user").to_numpy()
    assert got.dtype == np.int64 and got.tolist() == converted.tolist()
    if categorical == "integer":  # beyond float64's 53 bits: read exactly
        assert got.tolist() == [2**40, 2**63 - 5, 0, 10**12, 42, 2**63 - 1]


@pytest.fixture(scope="module")
def managed_run(tmp_path_factory):
    """(config, artifact, recscale eval's result) of a 1-process run with t_user managed (256 slots)."""
    root = tmp_path_factory.mktemp("managed")
    cfg = managed_job(root)
    run_dir = new_run(root, "run", cfg)
    run_distributed(train_worker, 1, cfg, run_dir, False)
    export_run(run_dir, "latest", root / "artifact", "none")
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return cfg, root / "artifact", eval_predictions(checkpoint)


@pytest.mark.distributed
def test_artifact_scores_raw_ids_as_recscale_eval_does(managed_run, tmp_path):
    cfg, artifact, reference = managed_run
    features = json.loads((artifact / "features.json").read_text())
    spec = {s["name"]: s for s in features["sparse"]}
    assert spec["user"]["collisions"] == "managed" and spec["item"]["collisions"] == "none"
    assert features["managed"]["t_user"]["rows"] == 256
    with np.load(artifact / features["managed"]["t_user"]["file"]) as saved:
        ids, slots = saved["ids"], saved["slots"]
    users = pq.read_table(cfg.data.valid_path).column("user").to_numpy()
    hit = np.isin(users, ids)
    print(f"admitted {len(ids)} of 256 slots; valid rows with an admitted user: {hit.mean():.2f}")
    assert 0 < len(ids) <= 256 and hit.any() and not hit.all()  # both branches decide predictions below
    assert sorted(slots.tolist()) == sorted(set(slots.tolist()))  # one slot per admitted id

    out = tmp_path / "preds.parquet"
    assert predict_file(artifact, cfg.data.valid_path, out) == 1024
    p = pq.read_table(out).column("p_label").to_numpy()
    delta = np.abs(p - reference["p"][:, 0]).max()
    print(f"max |dp| vs recscale eval: {delta:.2e}")
    assert delta <= 1e-5, f"max |dp| {delta}"

    model = load(artifact)
    rows = pq.read_table(cfg.data.valid_path).slice(0, 1).to_pydict()
    unseen, missed = 2**62 + 7, int(users[~hit][0])
    batch = {k: v * 3 for k, v in rows.items()}
    batch["user"] = [unseen, missed, int(ids[0])]
    inputs = model.inputs(batch)
    user_ids = inputs[2 * [s["name"] for s in features["sparse"]].index("user") + 1]
    assert user_ids.tolist() == [255, 255, int(slots[0])]
    scores = model.predict(batch)[:, 0]
    assert abs(scores[0] - scores[1]) <= 1e-6  # the shared slot (rows of one batch may differ in the last bit)
    assert abs(scores[0] - scores[2]) > 1e-4  # not an admitted user's row
