"""Per-rank main of a training job: read ``<run_dir>/config.yaml``, train, exit non-zero on failure.

torchrun (local, TorchX, Slurm) starts this module on every rank. A failing rank logs its error
and exits; torchrun then stops the others, so no rank waits forever for a dead peer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import yaml

from recscale.configs import config_from_dict
from recscale.trainer.run_dir import CONFIG


class _FbgemmLoadNoise(logging.Filter):
    """Drops FBGEMM's "Successfully loaded: '<lib>.so'" lines, logged at INFO on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Successfully loaded: 'fbgemm_gpu")


def install_log_filters() -> None:
    """Filters on the root logger's handlers (call after ``logging.basicConfig``)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_FbgemmLoadNoise())


def quiet_known_warnings() -> None:
    """Silence warnings that are known to be false alarms here.

    FBGEMM's dense (data-parallel) embedding lookup has no registered autograd kernel and torch warns
    that backprop through it "may be silently incorrect"; TorchRec wraps it in its own autograd
    function, and tests/sharding/test_equivalence.py checks data-parallel tables against an unsharded
    reference after a training step.
    """
    warnings.filterwarnings("ignore", message=r"fbgemm::dense_embedding_codegen_lookup_function")
    # the train pipeline's fx tracer asks torch.fx whether it is tracing; torch logs a deprecation note
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


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
        reason = f"{stall} [{str(err).splitlines()[0] if str(err) else type(err).__name__}]" if stall else err
        logging.getLogger("recscale").error(
            "rank %s failed: %s\n%s", os.environ.get("RANK", "0"), reason, traceback.format_exc()
        )
        return 1
    from recscale.sharding.process_group import shutdown_distributed

    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
