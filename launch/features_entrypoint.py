"""Per-rank main of ``recscale features select``: permutation importance of a checkpoint on N ranks.

Every rank loads the checkpoint sharded (``load_for_evaluation``, as ``recscale eval`` does) and reads
the same chosen validation rows: the first ``--max-batches`` batches of ``--batch-size`` rows in file
order, the rows one process reads. A feature is permuted across each whole batch with the one-process
generator, then each rank evaluates its contiguous ``batch_size / N`` rows of it; the metrics are
computed over every rank (``trainer.evaluate``), so the importances are those of one process up to the
order of floating-point sums. Rank 0 then writes the selected config, the ``--json`` report and the
result file the launching process reads (``launch.local.run_features_local``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from recscale.configs import JobConfig
from recscale.configs.tasks import resolve_tasks
from recscale.launch.entrypoint import quiet_known_warnings, setup_logging
from recscale.launch.failures import one_line, report_failure
from recscale.trainer.run_dir import write_json

log = logging.getLogger("recscale")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, compute the importances, select; rank 0 writes the outputs and the result."""
    parser = argparse.ArgumentParser(prog="recscale.launch.features_entrypoint")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--checkpoint", required=True, help="a resolved checkpoint directory")
    parser.add_argument("--out", required=True, help="the result JSON the launching process reads")
    parser.add_argument("--selected", required=True, help="the selected config YAML")
    parser.add_argument("--json", default="")
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--weights", default="")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--max-batches", type=int, default=0)
    parser.add_argument("--log-dir", default="", help="the job's log folder (failure records go there)")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_known_warnings()
    try:
        result = select_on_ranks(args)
    except Exception as err:  # noqa: BLE001 - reported, then the rank exits non-zero
        report_failure(Path(args.log_dir) if args.log_dir else None, one_line(err))
        return 1
    if result is not None:
        write_json(Path(args.out), result)
    from recscale.sharding.process_group import shutdown_distributed

    shutdown_distributed()
    return 0


def select_on_ranks(args: argparse.Namespace) -> dict[str, Any] | None:
    """Importances (a collective), then on rank 0 the selections and the outputs; None on ranks > 0."""
    import torch.distributed as dist

    from recscale.launch.features_cli import parse_weights, selected_config, write_config
    from recscale.trainer.feature_filter import summary

    run_dir = Path(args.run_dir)
    cfg, importance, data_paths = compute_importance(
        run_dir, Path(args.checkpoint), args.repeats, args.seed, args.batch_size, args.max_batches
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    tasks = resolve_tasks(cfg)
    weights = parse_weights(args.weights, [t.name for t in tasks], [t.weight for t in tasks])
    result = summary(importance, args.budget, weights, args.seed, args.floor)
    write_config(selected_config(cfg, set(result["filter"]["kept"]), data_paths), Path(args.selected))
    result["config"] = args.selected
    if args.json:
        write_json(Path(args.json), result)
    return result


def compute_importance(
    run_dir: Path, checkpoint: Path, repeats: int, seed: int, batch_size: int, max_batches: int
) -> tuple[JobConfig, Any, tuple[str, str]]:
    """Load ``checkpoint`` sharded over this process group and evaluate it intact and with each feature permuted.

    A collective on every rank (module docstring).

    Returns:
        The run's config, the ``Importance`` (the same on every rank) and the (train, valid) data paths the
        run read.
    """
    from recscale.data.prepare import prepare_data
    from recscale.data.reader import ParquetBatchReader
    from recscale.launch.eval_entrypoint import load_for_evaluation
    from recscale.trainer.evaluate import evaluate
    from recscale.trainer.feature_filter import candidates, permutation_importance

    loaded = load_for_evaluation(run_dir, checkpoint, batch_size)
    cfg, info, parallel, step, per_rank = loaded.cfg, loaded.info, loaded.parallel, loaded.step, loaded.per_rank
    whole = batch_size or cfg.trainer.batch_size
    if whole % info.world_size:
        raise ValueError(f"--batch-size {whole}: expected a multiple of the {info.world_size} ranks")
    paths = prepare_data(cfg.data, cfg.embeddings)
    # every rank reads the rows one process reads, whole batches in file order (rank 0 of a world of 1)
    reader = ParquetBatchReader(
        str(paths.valid), cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=whole, mode="eval"
    )
    batches = []
    for batch in reader:
        if max_batches and len(batches) >= max_batches:
            break
        batches.append(batch)
    if not batches:
        raise ValueError(f"{paths.valid}: no validation batches to evaluate")
    features = candidates(cfg.data.features)
    log.info(
        "checkpoint step %d: %d features x %d repeats on %d validation batches of %d rows, %d per rank "
        "(%d evaluations)",
        step,
        len(features),
        repeats,
        len(batches),
        whole,
        per_rank,
        1 + len(features) * repeats,
    )
    names = cfg.data.features.domain_names

    def run(bs: Any) -> dict[str, float]:
        return evaluate(parallel.model, bs, info.device, domain_names=names)

    first = info.rank * per_rank
    share = None if info.world_size == 1 else (lambda b: b.rows(first, first + per_rank))
    importance = permutation_importance(run, batches, features, resolve_tasks(cfg), repeats, seed, share)
    return cfg, importance, (str(paths.train.resolve()), str(paths.valid.resolve()))


if __name__ == "__main__":
    sys.exit(main())
