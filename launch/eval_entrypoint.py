"""Per-rank main of ``recscale eval``: load a checkpoint (any world size) and evaluate it on Parquet."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from recscale.configs import JobConfig, config_from_dict
from recscale.launch.entrypoint import quiet_known_warnings, setup_logging
from recscale.launch.failures import one_line, report_failure
from recscale.trainer.progress import PROGRESS_LINES
from recscale.trainer.run_dir import CHECKPOINTS, CONFIG, write_json


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint); not yet verified.

    ``checkpoints/best`` (a link to the best evaluation's checkpoint) resolves to the checkpoint it points at.
    """
    path = path.expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    if (path / CONFIG).is_file():
        found = sorted(p for p in (path / CHECKPOINTS).glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        if not found:
            raise FileNotFoundError(f"{path}: the run directory has no complete checkpoint")
        path = found[-1]
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (expected <run_dir>/{CHECKPOINTS}/step_<N>)")
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate, write the metrics JSON (rank 0)."""
    parser = argparse.ArgumentParser(prog="recscale.launch.eval_entrypoint")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default="")
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--log-dir", default="", help="the job's log folder (failure records go there)")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_known_warnings()
    try:
        result = evaluate_checkpoint(Path(args.checkpoint), args.data, args.batch_size)
    except Exception as err:  # noqa: BLE001 - reported, then the rank exits non-zero
        report_failure(Path(args.log_dir) if args.log_dir else None, one_line(err))
        return 1
    if result is not None:
        write_json(Path(args.out), result)
    from recscale.sharding.process_group import shutdown_distributed

    shutdown_distributed()
    return 0


def fit_manual_ranks(sharding: Any, world_size: int) -> Any:
    """A hand-built plan's ``ranks`` folded into ``0..world_size-1`` (``r % world_size``, duplicates dropped).

    The checkpoint is resharded on load, so where a table lived in the run does not bind evaluation;
    a run that pinned a table to rank 1 is evaluated on one rank with the table on rank 0.
    """
    manual, moved = {}, []
    for name, shard in sharding.manual.items():
        ranks = list(dict.fromkeys(r % world_size for r in shard.ranks))
        if ranks != list(shard.ranks):
            moved.append(f"{name} {list(shard.ranks)} -> {ranks}")
        manual[name] = dataclasses.replace(shard, ranks=ranks)
    if not moved:
        return sharding
    logging.getLogger("recscale").info(
        "evaluating on %d rank(s): hand-built plan ranks folded (%s)", world_size, "; ".join(moved)
    )
    return dataclasses.replace(sharding, manual=manual)


def progress_lines(batches: Iterable[Any], total: int, every_s: float = 1.0) -> Iterator[Any]:
    """Yield ``batches``, logging ``batch k/N | X examples/s`` at most every ``every_s`` seconds (and at the end)."""
    start = last = time.perf_counter()
    examples = 0
    for k, batch in enumerate(batches, 1):
        yield batch
        examples += int(batch.labels.shape[0])
        now = time.perf_counter()
        if now - last >= every_s or k == total:
            last = now
            rate = examples / max(now - start, 1e-9)
            logging.getLogger("recscale").info("batch %d/%d | %s examples/s", k, total, f"{rate:,.0f}")


@dataclasses.dataclass
class LoadedCheckpoint:
    """A run's checkpoint loaded for evaluation on this process group (``load_for_evaluation``)."""

    cfg: JobConfig
    info: Any
    """This rank's ``DistInfo``."""
    parallel: Any
    """The ``ParallelModel`` with the checkpoint's weights."""
    step: int
    per_rank: int
    """Evaluation batch size per rank."""


def load_for_evaluation(run_dir: Path, path: Path, batch_size: int) -> LoadedCheckpoint:
    """The weights of checkpoint ``path`` of ``run_dir`` in the run's model, on however many ranks run this.

    Expert parallelism is narrowed to what the world size allows and a hand-built plan's pinned ranks are
    folded onto the ranks there are; the files are verified first (every rank hashes its share). Weights
    only: evaluation needs no optimizer state, whose layout can be the writer's (e.g. one row-wise Adagrad
    momentum per column shard).
    """
    from recscale.modules.build import build_model
    from recscale.sharding.apply import parallelize
    from recscale.sharding.process_group import init_distributed
    from recscale.trainer.checkpoint import CheckpointManager

    cfg = config_from_dict(yaml.safe_load((run_dir / CONFIG).read_text()))
    info = init_distributed(cfg.trainer.device, cfg.sharding.plan_timeout_s)
    per_rank = (batch_size or cfg.trainer.batch_size) // info.world_size or 1
    sharding = cfg.sharding
    if info.world_size % sharding.ep_size:  # e.g. an ep_size 2 run evaluated on 1 rank
        ep_size = math.gcd(sharding.ep_size, info.world_size)
        logging.getLogger("recscale").info(
            "evaluating with sharding.ep_size %d (the run used %d, which does not divide %d ranks); the dense "
            "checkpoint is mapped onto it",
            ep_size,
            sharding.ep_size,
            info.world_size,
        )
        sharding = dataclasses.replace(sharding, ep_size=ep_size)
    sharding = fit_manual_ranks(sharding, info.world_size)
    parallel = parallelize(
        build_model(cfg, dense_device=info.device),
        sharding,
        cfg.optimizer,
        info=info,
        batch_size_per_rank=per_rank,
        total_steps=1,
        precision=cfg.trainer.precision,
        aux_loss_weight=cfg.trainer.aux_loss_weight,
    )
    manager = CheckpointManager(run_dir, cfg.checkpoint, info.rank, info.world_size)
    problems = manager.check(path)  # every rank hashes its share of the files
    if problems:  # the first on the console, all of them in the log
        raise ValueError(f"{path}: damaged checkpoint: " + "\n  ".join(problems))
    return LoadedCheckpoint(cfg, info, parallel, manager.load_weights(path, parallel), per_rank)


def evaluate_checkpoint(checkpoint: Path, data: str, batch_size: int) -> dict[str, object] | None:
    """Metrics of ``checkpoint`` on ``data`` (default: the run's validation data); None on ranks > 0."""
    from recscale.data.prepare import prepare_data
    from recscale.trainer.checkpoint import checkpoint_run_dir
    from recscale.trainer.data import make_eval_batches
    from recscale.trainer.evaluate import evaluate

    path = resolve_checkpoint(checkpoint)
    loaded = load_for_evaluation(checkpoint_run_dir(path), path, batch_size)
    cfg, info, parallel, step, per_rank = loaded.cfg, loaded.info, loaded.parallel, loaded.step, loaded.per_rank
    target = data or str(prepare_data(cfg.data, cfg.embeddings).valid)
    batches: Iterable[Any] = make_eval_batches(cfg, info, target, per_rank)
    if info.is_main and os.environ.get(PROGRESS_LINES) == "1":  # `recscale eval` draws a bar on its terminal
        batches = progress_lines(batches, len(batches))  # type: ignore[arg-type]
    metrics = evaluate(parallel.model, batches, info.device, domain_names=cfg.data.features.domain_names)
    if not info.is_main:
        return None
    return {"checkpoint": str(path), "step": step, "data": target, "world_size": info.world_size, **metrics}


if __name__ == "__main__":
    sys.exit(main())
