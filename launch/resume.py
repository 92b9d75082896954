"""Continuing a run and starting from another run's weights: the launcher's side of ``--resume`` and ``--init-from``.

``recscale train --resume RUN_DIR`` continues RUN_DIR with the config it was started with. A CONFIG
or ``--set`` given with it must give the same config, except for the run's length
(``LENGTH_KEYS``): a longer ``trainer.epochs`` or ``trainer.max_steps`` extends a run, finished or not,
as a further section of the same run. A finished run that is not extended is left untouched.
``--init-from`` names the checkpoint a new run takes its weights from (``checkpoint.init_from``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from recscale.configs import JobConfig, config_from_dict, config_to_dict, load_config
from recscale.trainer.run_dir import CONFIG, SUMMARY

log = logging.getLogger("recscale")

LENGTH_KEYS = ("trainer.epochs", "trainer.max_steps")
"""The config keys a resumed run may change: they set how long it trains."""


def resume_config(run_dir: Path, config: str | None, overrides: list[str]) -> JobConfig:
    """The config RUN_DIR continues with: its own, with ``overrides`` applied, or ``config`` if it agrees.

    Raises ``ValueError`` naming every key whose value differs from the run's (other than ``LENGTH_KEYS``).
    """
    saved_path = run_dir / CONFIG
    if not saved_path.is_file():
        raise ValueError(f"--resume {run_dir}: not a run directory (no {CONFIG})")
    saved = config_from_dict(yaml.safe_load(saved_path.read_text()))
    wanted = load_config(config if config else str(saved_path), overrides)
    before, after = _flat(config_to_dict(saved)), _flat(config_to_dict(wanted))
    differing = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    refused = [k for k in differing if k not in LENGTH_KEYS]
    if refused:
        shown = "; ".join(f"{k}: {before.get(k)!r} in the run, {after.get(k)!r} asked" for k in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ValueError(
            f"--resume {run_dir}: the config differs from the run's ({shown}{more}); a resumed run may change "
            f"only {' and '.join(LENGTH_KEYS)} (to extend it). To train with another config from its weights, "
            f"start a new run with --init-from {run_dir}"
        )
    for key in differing:
        log.info("resuming %s with %s = %s (was %s)", run_dir, key, after.get(key), before.get(key))
    return wanted


def nothing_to_do(run_dir: Path, total_steps: int) -> str:
    """Why resuming RUN_DIR for ``total_steps`` steps in all has nothing to train ("" when it has).

    A run is finished when its ``summary.json`` says it trained, or planned, ``total_steps`` steps or more
    (a stage that ended early makes a run shorter than planned), or that it stopped early (a plateau stop
    would end an extension at once).
    """
    path = run_dir / SUMMARY
    if not path.is_file():
        return ""  # never finished: an interrupted run resumes
    summary = json.loads(path.read_text())
    steps = int(summary.get("steps", 0))
    if summary.get("ended") == "early_stop":
        return (
            f"{run_dir} stopped early at step {steps} ({summary.get('stop_reason', 'early stopping')}); nothing to "
            f"do: to train on from its weights, start a new run with --init-from {run_dir}"
        )
    if total_steps <= max(steps, int(summary.get("planned_steps") or 0)):  # a stage may have ended early
        return (
            f"{run_dir} finished at step {steps}; nothing to do (to train longer, resume it with "
            "--set trainer.epochs=N or --set trainer.max_steps=N)"
        )
    return ""


def init_checkpoint(source: str) -> Path:
    """The checkpoint directory ``--init-from SOURCE`` names: a checkpoint, or a run's ``best`` or newest one."""
    from recscale.sharding.checkpoint import CheckpointManager, verify

    path = Path(source).expanduser().resolve()
    if (path / "manifest.json").is_file():
        problems = verify(path)
        if problems:
            raise ValueError(f"--init-from {source}: the checkpoint is damaged: {problems[0]}")
        return path
    if not (path / CONFIG).is_file():
        raise ValueError(
            f"--init-from {source}: neither a checkpoint directory (no manifest.json) nor a run directory (no {CONFIG})"
        )
    manager = CheckpointManager(path, None, 0, 1)
    best = manager.root / "best"
    if best.exists() and not verify(best.resolve()):
        return best.resolve()
    latest = manager.latest_valid()
    if latest is None:
        raise ValueError(f"--init-from {source}: the run has no complete checkpoint in {manager.root}")
    return latest.resolve()


def check_init_tables(checkpoint: Path, cfg: JobConfig) -> None:
    """Refuse, naming the table, a new run whose tables differ in rows or width from the checkpoint's run.

    Read from the source run's ``config.yaml`` before anything starts (the ranks check the saved tensors
    themselves too, for a checkpoint without its run directory).
    """
    source = checkpoint.parent.parent / CONFIG
    if not source.is_file():
        return
    saved = config_from_dict(yaml.safe_load(source.read_text()))
    rows = {t.name: (t.num_embeddings, t.dim or saved.embeddings.dim) for t in saved.embeddings.tables}
    for table in cfg.embeddings.tables:
        shape = (table.num_embeddings, table.dim or cfg.embeddings.dim)
        if table.name not in rows:
            raise ValueError(f"--init-from {checkpoint}: table {table.name} is not in the checkpoint's run ({source})")
        if rows[table.name] != shape:
            raise ValueError(
                f"--init-from {checkpoint}: table {table.name} has {rows[table.name][0]} rows of dim "
                f"{rows[table.name][1]} there, {shape[0]} rows of dim {shape[1]} in this config"
            )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


__all__ = ["LENGTH_KEYS", "check_init_tables", "init_checkpoint", "nothing_to_do", "resume_config"]
