"""Checkpoints: the sharded tables, the dense part, and each rank's trainer state, saved together.

Layout of ``<run_dir>/checkpoints/step_<N>/``::

    sparse/        torch.distributed.checkpoint: tables + fused optimizer state (reshardable)
    dense/         layout-free DCP form + layout.json (any backend reloads it at any layout:
                   ``sharding/dense_checkpoint.py``); a DeepSpeed engine's own files in dense/dense/
    trainer/rank<r>.pt   step, data position, RNG states of rank r
    manifest.json  every file with its size and SHA-256, the step, the world size

A checkpoint is written under ``step_<N>.tmp`` and renamed only after every rank has finished
writing and rank 0 has written the manifest, so a crash never leaves a directory that looks
complete. On resume, the newest checkpoint whose files match its manifest is used; a truncated or
corrupted one is skipped with a warning naming the bad files.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from recscale.configs.schema import CheckpointConfig
from recscale.sharding.apply import ParallelModel
from recscale.sharding.process_group import host_group
from recscale.trainer.run_dir import CHECKPOINTS, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, top-k noise, shuffles)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sparse_state(parallel: ParallelModel) -> dict[str, Any]:
    """The tables and their optimizers' state, as DCP saves/loads them.

    ``optim`` is the fused (in-backward) optimizers' state, ``table_optim`` the data-parallel
    tables' optimizer. Empty subtrees are left out: DCP drops them at save and then fails to load.
    """
    state: dict[str, Any] = {"model": parallel.sparse.state_dict()}
    optim = parallel.sparse.fused_optimizer.state_dict()
    if optim.get("state"):
        state["optim"] = optim
    table_optimizer = parallel.updater.table_optimizer
    if table_optimizer is not None:
        _materialise_state(table_optimizer)
        state["table_optim"] = table_optimizer.state_dict()
    return state


def _materialise_state(optimizer: Any) -> None:
    """Create a lazy optimizer's state (DCP loads into existing tensors only) without moving weights.

    ``KeyedOptimizer.init_state`` takes a step with zero gradients; with weight decay that step would
    change the weights, so the learning rate is 0 while it runs. Does nothing once state exists.
    """
    if optimizer.state_dict().get("state"):
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.init_state()
    for group, lr in zip(optimizer.param_groups, saved):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


class CheckpointManager:
    """Saves, lists, verifies and loads the checkpoints of one run directory.

    Args:
        run_dir: the run directory.
        cfg: the ``checkpoint`` section.
        rank: this process's rank.
        world_size: ranks in the job.
    """

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, rank: int, world_size: int) -> None:
        self.root = run_dir / CHECKPOINTS
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size

    # ---------------------------------------------------------------------------------- saving

    def save(self, step: int, parallel: ParallelModel, trainer_state: dict[str, Any], name: str = "") -> Path:
        """Write a complete checkpoint of ``step`` (collective: every rank calls it).

        ``name`` (e.g. ``best``) writes ``checkpoints/<name>`` instead of ``step_<N>``, replacing the
        previous one, outside the ``keep_last`` rotation.
        """
        final = self.root / (name or f"step_{step:08d}")
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "trainer").mkdir(parents=True)
        _barrier()
        dcp.save(sparse_state(parallel), checkpoint_id=str(tmp / "sparse"))
        parallel.dense.save(tmp / "dense", backend_files=self.cfg.deepspeed_files)
        mine = tmp / "trainer" / f"rank{self.rank}.pt"
        torch.save({**trainer_state, "step": step, "world_size": self.world_size}, mine.with_suffix(".pt.tmp"))
        mine.with_suffix(".pt.tmp").replace(mine)
        _barrier()
        if self.rank == 0:
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            write_json(
                tmp / MANIFEST,
                {
                    "step": step,
                    "world_size": self.world_size,
                    "files": {
                        str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
                    },
                },
            )
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
            if not name:
                self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        complete = self.list_complete()
        for old in complete[: max(0, len(complete) - self.cfg.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    # --------------------------------------------------------------------------------- finding

    def list_complete(self) -> list[Path]:
        """Renamed (complete) checkpoint directories, oldest first."""
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))

    @staticmethod
    def verify(path: Path) -> list[str]:
        """Problems of a checkpoint directory against its manifest (empty list = intact)."""
        manifest_path = path / MANIFEST
        try:
            import json

            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as err:
            return [f"{manifest_path}: unreadable manifest ({err})"]
        problems = []
        for rel, meta in manifest["files"].items():
            p = path / rel
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != meta["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes, expected {meta['bytes']} (truncated?)")
            elif _sha256(p) != meta["sha256"]:
                problems.append(f"{p}: checksum mismatch (corrupted)")
        return problems

    def latest_valid(self) -> Path | None:
        """The newest intact checkpoint, decided on rank 0 and shared with every rank.

        Broken ones are skipped with a warning that names the bad files.
        """
        choice = ""
        if self.rank == 0:
            for candidate in reversed(self.list_complete()):
                problems = self.verify(candidate)
                if not problems:
                    choice = str(candidate)
                    break
                log.warning("skipping damaged checkpoint %s:\n  %s", candidate, "\n  ".join(problems))
        if dist.is_initialized() and self.world_size > 1:
            box = [choice]
            dist.broadcast_object_list(box, src=0, group=host_group())
            choice = box[0]
        return Path(choice) if choice else None

    # --------------------------------------------------------------------------------- loading

    def load(self, path: Path, parallel: ParallelModel) -> dict[str, Any]:
        """Load ``path`` into ``parallel`` (any world size and plan for the tables); return this rank's trainer state.

        The dense part loads at any layout too (world size, ``ep_size``, ZeRO stage, backend), through
        its layout-free form (``recscale.sharding.dense_checkpoint``).

        When the world size changed, ranks without a state file of their own get rank 0's; the data
        position is then mapped to the same fraction of the epoch (``trainer.data.TrainData.restore``).
        """
        load_sparse(path / "sparse", parallel)
        parallel.dense.load(path / "dense")
        mine = path / "trainer" / f"rank{self.rank}.pt"
        if not mine.exists():
            mine = path / "trainer" / "rank0.pt"
        trainer_state: dict[str, Any] = torch.load(mine, weights_only=False)
        return trainer_state


def _flat_keys(tree: dict[str, Any], prefix: str) -> list[str]:
    """DCP's names of the leaves of a nested dict (``a.b.c``)."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        out += _flat_keys(value, name) if isinstance(value, dict) else [name]
    return out


def load_sparse(directory: Path, parallel: ParallelModel) -> None:
    """Load the tables and their optimizer state into the current plan (resharding as needed).

    Optimizer state is stored differently for data-parallel and model-parallel tables (TorchRec
    issue #2394); a table whose kind changed between the saving and the loading plan keeps its
    weights but starts with fresh optimizer state, and a warning names it. A missing weight is an error.
    """
    state = sparse_state(parallel)
    saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
    missing_weights = [k for k in _flat_keys(state["model"], "model") if k not in saved]
    if missing_weights:
        raise ValueError(f"{directory}: the checkpoint lacks table weights: {', '.join(missing_weights[:5])}")
    to_load: dict[str, Any] = {"model": state["model"]}
    reset: list[str] = []
    for sub in ("optim", "table_optim"):
        if sub not in state:
            continue
        kept = {}
        for param_key, entries in state[sub]["state"].items():
            if all(k in saved for k in _flat_keys(entries, f"{sub}.state.{param_key}")):
                kept[param_key] = entries  # the optimizer's own tensors: DCP copies into them
            else:
                reset.append(param_key)
        if kept:
            to_load[sub] = {"state": kept}
    dcp.load(to_load, checkpoint_id=str(directory))
    parallel.sparse.load_state_dict(state["model"])
    if "optim" in state:
        parallel.sparse.fused_optimizer.load_state_dict(state["optim"])
    if "table_optim" in state and parallel.updater.table_optimizer is not None:
        parallel.updater.table_optimizer.load_state_dict(state["table_optim"])
    if reset:
        log.warning(
            "optimizer state of %s starts fresh: these tables changed between data-parallel and "
            "model-parallel sharding since the checkpoint (their weights were loaded)",
            ", ".join(sorted(reset)),
        )


def checkpoint_run_dir(path: Path) -> Path:
    """The run directory a checkpoint directory belongs to."""
    path = Path(path).resolve()
    if path.parent.name != CHECKPOINTS:
        raise ValueError(f"{path} is not a checkpoint directory (expected <run_dir>/{CHECKPOINTS}/step_<N>)")
    return path.parent.parent


def remove_partial(path: Path) -> None:
    """Delete a half-written checkpoint directory (after a crash)."""
    if path.name.endswith(".tmp") and path.exists():
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["CheckpointManager", "checkpoint_run_dir", "remove_partial", "rng_state", "set_rng_state"]
