"""Evaluating between training steps leaves TorchRec's pipeline as it was.

The pipeline has the next batch's embedding input all-to-all in flight when an evaluation detaches
it. Re-attaching must not run that input dist again: with sequence features (EmbeddingCollection) a
second one desynchronised the ranks' all-to-alls on the next step (gloo ``in->size == out->size``).
"""

from __future__ import annotations

import pytest

from recscale.trainer.loop import train
from tests.distributed import run_distributed
from tests.trainer.runs import losses, new_run, small_job

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SHORT = ["trainer.max_steps=6", "checkpoint.every_steps=0"]


def _train(rank, world, cfg, run_dir):
    train(cfg, run_dir)


@pytest.mark.parametrize("preset", ["kunlun_synthetic", "quickstart"])
def test_periodic_evaluation_does_not_change_training(tmp_path, preset):
    quiet = small_job(tmp_path / "cache", *SHORT, preset=preset)
    evaluated = small_job(tmp_path / "cache", *SHORT, "trainer.eval_every=2", "trainer.eval_batches=2", preset=preset)
    assert quiet.trainer.pipeline and evaluated.trainer.pipeline
    runs = {}
    for name, cfg in (("quiet", quiet), ("evaluated", evaluated)):
        runs[name] = new_run(tmp_path, name, cfg)
        run_distributed(_train, 2, cfg, runs[name])
    assert losses(runs["evaluated"]) == losses(runs["quiet"])
    assert sorted(losses(runs["quiet"])) == list(range(1, 7))
