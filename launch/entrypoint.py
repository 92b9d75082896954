"""Per-rank main of a training job: read ``<run_dir>/config.yaml``, train, exit non-zero on failure.

torchrun (local, TorchX, Slurm) starts this module on every rank. A failing rank logs its error
and exits; torchrun then stops the others, so no rank waits forever for a dead peer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

from recscale.configs import config_from_dict
from recscale.launch.failures import one_line, report_failure
from recscale.trainer.run_dir import CONFIG, LOGS

VERBOSE = "RECSCALE_VERBOSE"
"""Environment variable: ``1`` keeps the library noise below on the console (``recscale --verbose``)."""

_NOISE = (
    "Successfully loaded: 'fbgemm_gpu",  # FBGEMM, once per library it loads
    "[TBE=",  # FBGEMM's table-batched embedding dumps its constructor arguments at INFO
    "Sharding Type is data_parallel, caching params will be ignored",  # TorchRec, per data-parallel table
    "Compute Kernel is dense, caching params will be ignored",
)


def verbose() -> bool:
    """Whether ``--verbose`` asked for the libraries' own messages."""
    return os.environ.get(VERBOSE, "") == "1"


class _KnownNoise(logging.Filter):
    """Drops the libraries' messages that ask nothing of the user (listed in ``_NOISE``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_NOISE)


def install_log_filters() -> None:
    """Filters on the root logger's handlers (call after ``logging.basicConfig``); none under ``--verbose``."""
    if verbose():
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_KnownNoise())


def quiet_known_warnings() -> None:
    """Silence warnings that ask nothing of the user (the future and deprecation ones show under ``--verbose``).

    FBGEMM's dense (data-parallel) embedding lookup has no registered autograd kernel and torch warns
    that backprop through it "may be silently incorrect"; TorchRec wraps it in its own autograd
    function, and tests/sharding/test_equivalence.py checks data-parallel tables against an unsharded
    reference after a training step. Future and deprecation warnings are about the libraries' next
    versions: the versions here are pinned.
    """
    warnings.filterwarnings("ignore", message=r"fbgemm::dense_embedding_codegen_lookup_function")
    # the train pipeline's fx tracer asks torch.fx whether it is tracing; torch logs a deprecation note
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    if verbose():
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def setup_logging() -> None:
    """Rank 0 logs INFO; other ranks only warnings (their full output is in the per-rank log files)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank{rank}] %(message)s" if rank else "%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("torchrec", "fbgemm_gpu", "torch.distributed", "DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    install_log_filters()


def main(argv: list[str] | None = None) -> int:
    """Parse ``--run-dir`` / ``--resume`` and train."""
    parser = argparse.ArgumentParser(prog="recscale.launch.entrypoint")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_known_warnings()
    run_dir = Path(args.run_dir)
    cfg = config_from_dict(yaml.safe_load((run_dir / CONFIG).read_text()))
    from recscale.trainer import faults
    from recscale.trainer.loop import train

    # a worker restarted by torchrun (or a requeued Slurm job) continues from the newest checkpoint
    resume = args.resume or faults.restart_attempt() > 0
    try:
        train(cfg, run_dir, resume=resume)
    except Exception as err:  # noqa: BLE001 - reported, then the rank exits non-zero
        stall = faults.explain(err)  # names the ranks that never reached a failed collective
        reason = f"{stall} [{one_line(err)}]" if stall else one_line(err)
        report_failure(run_dir / LOGS, reason)
        return 1
    from recscale.sharding.process_group import shutdown_distributed

    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
