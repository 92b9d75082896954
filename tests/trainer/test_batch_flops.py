"""MFU at the real sequence lengths: the trainer's ``BatchFlops`` and a Kunlun run's metrics and summary."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest
import torch

from recscale.data.prepare import prepare_data
from recscale.modules.build import build_model
from recscale.modules.flops import Lengths, total
from recscale.trainer.batch_flops import BatchFlops
from recscale.trainer.loop import train
from tests.distributed import run_distributed
from tests.modules.seq_helpers import seq_batch, seq_config
from tests.trainer.runs import new_run, small_job

KUNLUN = {"kunlun": {"dim": 16, "num_layers": 2, "window": 2, "rope": "time"}}


def _real(dense: torch.nn.Module, batch, max_lengths: dict[str, int]):  # type: ignore[no-untyped-def]
    """The batch's FLOPs at its real lengths, from the KJT by hand."""
    lengths = batch.sequences.lengths().view(len(max_lengths), -1)
    keys = batch.sequences.keys()
    return total(dense.flops({e: Lengths(lengths[keys.index(e)].clamp(max=m)) for e, m in max_lengths.items()}))


def test_batches_count_at_their_real_lengths_in_training_order() -> None:
    cfg = seq_config(model=KUNLUN)
    dense = build_model(cfg, sparse_device="meta").dense
    meter = BatchFlops.for_job(cfg, dense)
    max_lengths = {"click": 12, "buy": 6}
    assert meter.max_lengths == max_lengths
    batches = [seq_batch(cfg, 8, seed=s) for s in range(3)]  # lengths up to 1.5 x max_length, empty rows
    reader = meter.wrap(iter(batches))
    next(reader), next(reader), next(reader)  # a pipeline reads ahead ...
    meter.step(steady=False)  # ... and trains in order
    meter.step(steady=True)
    window = meter.take()
    real = [_real(dense, b, max_lengths) for b in batches]
    padded = total(dense.flops())
    assert (window.examples, window.real_forward, window.real_train) == (
        16,
        real[0].forward + real[1].forward,
        real[0].train + real[1].train,
    )
    assert (window.padded_forward, window.padded_train) == (16 * padded.forward, 16 * padded.train)
    assert meter.steady.real_train == real[1].train and meter.steady.examples == 8
    tokens = sum(
        int(b.sequences.lengths().view(2, -1)[i].clamp(max=m).sum())
        for b in batches[:2]
        for i, m in enumerate(max_lengths.values())
    )
    record = window.record()
    assert record["padding/token_fraction"] == 1 - tokens / (16 * 18)
    assert record["padding/flops_fraction"] == 1 - window.real_train / window.padded_train > 0.1
    assert record["flops_per_example_train"] == (real[0].train + real[1].train) / 16

    # a stage freezes weights: steps before the flush count with them training, later ones without
    meter.step(steady=True)
    for p in dense.parameters():
        p.requires_grad_(False)
    meter.flush()
    frozen = _real(dense, batches[2], max_lengths)
    assert meter.take().real_train == frozen.train < real[2].train
    assert meter.run.examples == 24 and meter.run.real_train == real[0].train + real[1].train + frozen.train


def test_profiled_steps_give_a_per_module_breakdown_at_real_lengths() -> None:
    """``--profile``'s per-module table divides these by the modules' times: they must not count padding."""
    cfg = seq_config(model=KUNLUN)
    dense = build_model(cfg, sparse_device="meta").dense
    meter = BatchFlops.for_job(cfg, dense)
    max_lengths = {"click": 12, "buy": 6}
    batches = [seq_batch(cfg, 8, seed=s) for s in range(3)]
    reader = meter.wrap(iter(batches))
    for profiled in (False, True, True):  # the profile window covers the last two steps
        next(reader)
        meter.step(steady=not profiled, profiled=profiled)
    breakdown = meter.profiled_breakdown()
    assert set(breakdown) == set(dense.flops())
    real = _real(dense, batches[1], max_lengths) + _real(dense, batches[2], max_lengths)
    assert abs(total(breakdown).forward - real.forward / 16) <= len(breakdown)  # per-module rounding
    assert abs(total(breakdown).train - real.train / 16) <= 2 * len(breakdown)
    assert total(breakdown).train < total(dense.flops()).train  # the padded count is larger
    assert meter.profiled_breakdown() == dense.flops()  # taken: nothing profiled is left


def test_models_without_sequences_count_a_constant() -> None:
    cfg = seq_config(arch="dcnv2", model={"dense_arch": [], "dcnv2": {"num_cross_layers": 1, "low_rank": 4}})
    dense = build_model(cfg, sparse_device="meta").dense
    meter = BatchFlops.for_job(cfg, dense)
    reader = meter.wrap(iter([seq_batch(cfg, 5, seed=0)]))
    next(reader)
    meter.step(steady=True)
    window = meter.take()
    per_example = total(dense.flops())
    assert window.per_example() == window.per_example(padded=True) == per_example
    assert window.record()["padding/token_fraction"] is None and window.record()["padding/flops_fraction"] is None


def _train(rank, world, cfg, run_dir):  # type: ignore[no-untyped-def]
    return train(cfg, run_dir)["steps"]


@pytest.mark.parametrize("world", [1, 2])
def test_kunlun_run_reports_mfu_at_real_lengths_and_the_padding(tmp_path, world) -> None:
    """2 epochs: the run's mean is over every training row twice, so it is known exactly.

    On 2 ranks each rank trains its own half of the rows, of other lengths: the logged and summary
    FLOPs are the mean over both ranks' examples, the same numbers as on one rank.
    """
    cfg = small_job(
        tmp_path / "cache",
        "data.features.sequences.0.max_length=16",
        "data.features.sequences.1.max_length=8",
        "model.kunlun.num_layers=2",
        "model.kunlun.events=[]",
        "trainer.log_every=4",
        "checkpoint.every_steps=0",
        "checkpoint.at_end=false",
        "metrics.peak_tflops=1.0",
        preset="kunlun_synthetic",
    )
    run_dir = new_run(tmp_path, "run", cfg)
    assert run_distributed(_train, world, cfg, run_dir) == [16] * world  # the global batch splits over the ranks
    summary = json.loads((run_dir / "summary.json").read_text())

    rows = ds.dataset(prepare_data(cfg.data, cfg.embeddings).train, format="parquet").to_table()
    caps = {q.name: q.max_length for q in cfg.data.features.sequences}
    lengths = {
        q.name: torch.tensor([min(len(x), caps[q.name]) for x in rows.column(q.ids).to_pylist()])
        for q in cfg.data.features.sequences
    }
    dense = build_model(cfg, sparse_device="meta").dense
    real = total(dense.flops({e: Lengths(n) for e, n in lengths.items()}))
    padded = total(dense.flops())
    n = rows.num_rows
    assert summary["flops_per_example"] == {"forward": round(real.forward / n), "train": round(real.train / n)}
    assert summary["flops_per_example_padded"] == {"forward": padded.forward, "train": padded.train}
    tokens = sum(int(x.sum()) for x in lengths.values())
    assert summary["padding"]["token_fraction"] == 1 - tokens / (n * sum(caps.values()))
    assert 0.2 < summary["padding"]["flops_fraction"] == 1 - real.train / (n * padded.train)
    assert 0 < summary["mfu"] < summary["mfu_padded"]  # the same seconds, fewer FLOPs
    for r in [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]:
        if r["kind"] == "train":
            assert r["flops_per_example_train"] < r["flops_per_example_train_padded"] == padded.train
            assert r["mfu"] == pytest.approx(r["flops_per_example_train"] * r["examples_per_s_per_rank"] / 1e12)
