"""fp16 embedding tables: stored as fp16 by TorchRec, trained on 2 ranks, counted at 2 bytes a value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from recscale.configs import JobConfig
from recscale.modules.embeddings import row_bytes, table_configs
from recscale.trainer.embedding_traffic import EmbeddingTraffic
from tests.distributed import run_distributed
from tests.trainer.runs import new_run, small_job


def _with_tables(cfg: JobConfig, data_type: str) -> JobConfig:
    for table in cfg.embeddings.tables:
        table.data_type = data_type  # type: ignore[assignment]
    return cfg


def test_row_bytes_follow_the_storage_type() -> None:
    assert row_bytes(16, "fp32") == 64
    assert row_bytes(16, "fp16") == 32


def test_torchrec_tables_get_the_configured_type(tmp_path: Path) -> None:
    from torchrec.modules.embedding_configs import DataType

    cfg = _with_tables(small_job(tmp_path), "fp16")
    assert {t.data_type for t in table_configs(cfg.embeddings, cfg.data.features)} == {DataType.FP16}


def test_traffic_counts_two_bytes_a_value_for_fp16_tables(tmp_path: Path) -> None:
    fp32 = EmbeddingTraffic(small_job(tmp_path))
    fp16 = EmbeddingTraffic(_with_tables(small_job(tmp_path), "fp16"))
    assert fp16.row_bytes == {name: n // 2 for name, n in fp32.row_bytes.items()}


def _train(rank: int, world: int, cfg: JobConfig, run_dir: Path) -> dict[str, Any]:
    from recscale.trainer import loop

    dtypes: set[torch.dtype] = set()
    original = loop.StepLoop.run

    def run(self: Any, start_step: int) -> dict[str, Any]:
        for value in self.parallel.sparse.state_dict().values():
            shards = value.local_shards() if hasattr(value, "local_shards") else []
            dtypes.update(s.tensor.dtype for s in shards)
        return original(self, start_step)

    loop.StepLoop.run = run
    try:
        summary = loop.train(cfg, run_dir)
    finally:
        loop.StepLoop.run = original
    return {"dtypes": dtypes, "auc": summary["final_eval"]["auc"]}


def test_fp16_tables_train_sharded_as_well_as_fp32_ones(tmp_path: Path) -> None:
    """Both storage types on 2 ranks from the same seed: fp16 rows really are fp16, and learn as well."""
    results, losses = {}, {}
    for data_type in ("fp32", "fp16"):
        cfg = _with_tables(
            small_job(tmp_path / "data", "checkpoint.every_steps=0", "checkpoint.at_end=false"), data_type
        )
        run_dir = new_run(tmp_path, data_type, cfg)
        results[data_type] = run_distributed(_train, 2, cfg, run_dir)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[data_type] = [r["loss"] for r in records if r["kind"] == "train"]
    for data_type, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        assert set().union(*(r["dtypes"] for r in results[data_type])) == {dtype}
    assert losses["fp16"] != losses["fp32"]  # the rows really were rounded
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert results["fp16"][0]["auc"] == pytest.approx(results["fp32"][0]["auc"], abs=0.01)
