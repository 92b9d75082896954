"""Small real training runs for trainer tests (synthetic data generated once per test session)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig, dump_config, load_config
from recscale.data.prepare import prepare_data
from recscale.trainer.run_dir import CONFIG, METRICS

SMALL = [
    "data.synthetic.num_train=3072",
    "data.synthetic.num_valid=1024",
    "data.synthetic.row_group_size=512",
    "data.reader.shuffle_buffer_rows=1024",
    "trainer.batch_size=384",
    "trainer.epochs=2",
    "trainer.eval_every=0",
    "trainer.log_every=1",
    "metrics.tensorboard=false",
    "metrics.progress_bar=never",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=10",
]
"""The small job's overrides: 3,072 rows, batch 384 (divisible by 1, 2 and 3 ranks), 2 epochs."""


def small_job(cache_dir: Path, *overrides: str, preset: str = "quickstart") -> JobConfig:
    """quickstart (or a preset built on it) shrunk: 3,072 training rows, batch 384 (divisible by 1, 2 and
    3 ranks), 2 epochs."""
    cfg = load_config(preset, [f"data.cache_dir={cache_dir}", *SMALL, *overrides])
    prepare_data(cfg.data, cfg.embeddings)
    return cfg


MANAGED = [
    "embeddings.tables.0.collisions=managed",
    "embeddings.tables.0.num_embeddings=256",
    "embeddings.tables.0.managed.eviction_interval=3",
    "trainer.epochs=1",
]
"""``managed_job``'s overrides: ``t_user`` managed with 256 slots and a round every 3 steps; one epoch."""


def managed_job(root: Path) -> JobConfig:
    """The small job trained on its own data (20,000 user ids) with ``t_user`` a managed table of 256 slots."""
    big = small_job(root / "cache")
    paths = prepare_data(big.data, big.embeddings)
    overrides = ["data.source=parquet", f"data.train_path={paths.train}", f"data.valid_path={paths.valid}"]
    return load_config("quickstart", [*SMALL, *overrides, *MANAGED])


def new_run(root: Path, name: str, cfg: JobConfig) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / CONFIG)
    return run_dir


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / METRICS).read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            out[record["step"]] = record["loss"]
    return out


def final_eval(run_dir: Path) -> dict[str, float]:
    evals = [json.loads(x) for x in (run_dir / METRICS).read_text().splitlines()]
    return [e for e in evals if e["kind"] == "eval"][-1]


def train_worker(rank: int, world: int, cfg: JobConfig, run_dir: Path, resume: bool) -> int:
    """``run_distributed`` worker: train (or resume) ``cfg`` in ``run_dir``; the steps the run ended at."""
    from recscale.trainer.loop import train

    return int(train(cfg, run_dir, resume=resume)["steps"])


def eval_checkpoint_worker(rank: int, world: int, checkpoint: Path) -> dict[str, float]:
    """``run_distributed`` worker: ``recscale eval`` of ``checkpoint`` on its own validation data."""
    from recscale.launch.eval_entrypoint import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, "", 384)


def train_watching_stages(cfg: JobConfig, run_dir: Path, resume: bool, on_enter: Callable[[Any, Any], None]) -> None:
    """Train with ``on_enter(parallel, stage)`` called each time the loop has entered a training stage."""
    from recscale.trainer import loop

    original = loop.enter_stage

    def watched(parallel: Any, stage: Any) -> Any:
        scales = original(parallel, stage)
        on_enter(parallel, stage)
        return scales

    loop.enter_stage = watched
    try:
        loop.train(cfg, run_dir, resume=resume)
    finally:
        loop.enter_stage = original
