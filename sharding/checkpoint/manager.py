"""Saves, finds, verifies and loads the checkpoints of one run directory.

Layout of ``<run_dir>/checkpoints/step_<N>/``::

    __<r>_<i>.distcp       rank r's tensors (DCP): its table shards and their optimizer state, its ranges
                           of the dense weights and optimizer state, its RNG states (one file per I/O thread)
    .metadata              DCP's index of every tensor entry (written by rank 0)
    trainer/rank<r>.json   rank r's trainer state: data position, RNG, plateau, stages (JSON)
    manifest.json          format, step, world size, the dense part's layout, schedule and shapes, and
                           every file with its size, SHA-256 and the rank that wrote it

Every rank writes its own files at once and hashes them as it writes; rank 0 gathers the digests (a
collective of a few bytes per file) and writes the manifest. A checkpoint is written under
``step_<N>.tmp`` and renamed only after every rank has finished writing and the manifest exists, so a
crash never leaves a directory that looks complete. ``checkpoints/best`` is a symbolic link to
``best-<N>``, swapped in one rename, so there always is a complete best checkpoint once there was one.

With ``checkpoint.async_save`` a save copies the state to host memory and returns; the files are
written in the background and the checkpoint is renamed into place as soon as every rank is done.
The next save, a load, ``latest_valid`` and ``wait`` wait for it first.

On resume, the newest checkpoint whose files match its manifest is used, each rank reading and hashing
its own share of the files; a truncated or corrupted one is skipped with a warning naming the bad files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from recscale.configs.schema import CheckpointConfig
from recscale.sharding.checkpoint.managed import ManagedIdsState
from recscale.sharding.checkpoint.parts import FORMAT, MANIFEST, load_parts, read_manifest, save_parts, unwrap
from recscale.sharding.checkpoint.protocol import Checkpointable
from recscale.sharding.checkpoint.sparse import SparseState
from recscale.sharding.checkpoint.staging import Stager
from recscale.sharding.checkpoint.trainer_state import TrainerState
from recscale.sharding.checkpoint.writer import METADATA, fsync_directory, sha256_file

log = logging.getLogger("recscale")

MANAGED_PART = "managed"
"""The managed-collision tables' part (``checkpoint.managed``), present when the model has such tables."""

CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"step_\d+")


def verify(path: Path, share: tuple[int, int] | None = None) -> list[str]:
    """Problems of a checkpoint directory against its manifest (empty list = intact).

    Args:
        path: the checkpoint directory.
        share: (rank, ranks): check only this rank's share of the files: the files it wrote when the
            world size is the writer's, else an equal share by bytes. None: every file.
    """
    try:
        manifest = read_manifest(path)
    except ValueError as err:
        return [str(err)]
    files: dict[str, dict[str, Any]] = manifest["files"]
    mine = sorted(files)
    if share is not None:
        rank, ranks = share
        if manifest["world_size"] == ranks:
            mine = [f for f in mine if files[f]["rank"] == rank]
        else:
            load = [0] * ranks
            owner: dict[str, int] = {}
            for name in sorted(files, key=lambda f: (-files[f]["bytes"], f)):
                owner[name] = min(range(ranks), key=lambda r: load[r])
                load[owner[name]] += files[name]["bytes"]
            mine = [f for f in mine if owner[f] == rank]
    by = f" (checked by rank {share[0]})" if share is not None else ""
    problems = []
    for rel in mine:
        meta, p = files[rel], Path(path) / rel
        if not p.is_file():
            problems.append(f"{p}: missing{by}")
        elif p.stat().st_size != meta["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, expected {meta['bytes']} (truncated?){by}")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{p}: checksum mismatch (corrupted){by}")
    return problems


class CheckpointManager:
    """Saves, lists, verifies and loads the checkpoints of one run directory.

    Every method that touches a checkpoint is collective (every rank calls it, in the same order).

    Args:
        run_dir: the run directory.
        cfg: the ``checkpoint`` section (None: the defaults).
        rank: this process's rank.
        world_size: ranks in the job.
    """

    def __init__(self, run_dir: Path, cfg: CheckpointConfig | None, rank: int, world_size: int) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.cfg = cfg or CheckpointConfig()
        self.rank = rank
        self.world_size = world_size
        self._group: Any = None
        self._pending: tuple[Future[Any], Path] | None = None
        self._stager: Stager | None = None
        self._deleting: threading.Thread | None = None

    def _process_group(self) -> Any:
        """A gloo group of all ranks for the checkpoint's collectives (made on first use; None without one).

        Its own group: an asynchronous save's collectives run in a background thread while training
        uses the default group, and on GPU runs they move CPU objects, which NCCL cannot. Its timeout
        is torch's default for gloo (30 minutes): the gather after the writes waits for the slowest
        rank's files (a rank that dies is noticed at once, by its closed connections).
        """
        if not dist.is_initialized():
            return None
        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _broadcast(self, value: Any) -> Any:
        group = self._process_group()
        if group is None or dist.get_world_size(group) == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    @staticmethod
    def _parts(parallel: Any, trainer_state: dict[str, Any] | None) -> dict[str, Checkpointable]:
        parts: dict[str, Checkpointable] = {
            "sparse": SparseState(parallel.sparse, parallel.updater.table_optimizer),
            "dense": parallel.dense.checkpoint_state(),
            "trainer": TrainerState(trainer_state),
        }
        return {**parts, **_managed_part(parallel)}

    # ---------------------------------------------------------------------------------- saving

    def save(self, step: int, parallel: Any, trainer_state: dict[str, Any], name: str = "") -> Path:
        """Write a complete checkpoint of ``step`` (collective: every rank calls it); returns its path.

        ``name`` (e.g. ``best``) writes ``checkpoints/<name>-<step>`` and points ``checkpoints/<name>``
        at it, outside the ``keep_last`` rotation. Named saves are synchronous: the loop reads them
        back by path. With ``checkpoint.async_save`` a step's save returns once its state is copied;
        the checkpoint is complete (renamed to its path) when ``wait`` returns.
        """
        self.wait()
        group = self._process_group()
        claimed: Path | str = ""
        if self.rank == 0:
            try:
                claimed = self._claim(step, name)
            except OSError as err:  # every rank raises it, instead of waiting for rank 0
                claimed = f"{self.root}: cannot create the checkpoint directory ({err})"
        claimed = self._broadcast(claimed)
        if isinstance(claimed, str):
            raise OSError(claimed)
        final = Path(claimed)
        tmp = final.with_name(final.name + ".tmp")

        def complete() -> None:  # rank 0, once every rank's files and the manifest are written
            if name:
                self._publish(tmp, final, name)
            else:
                self._replace(tmp, final)
                self._prune()

        stager = None
        if self.cfg.async_save and not name:
            self._stager = stager = self._stager or Stager()
        future = save_parts(
            tmp,
            self._parts(parallel, trainer_state),
            step=step,
            group=group,
            io_threads=self.cfg.io_threads,
            stager=stager,
            on_complete=complete,
        )
        if future is not None:
            self._pending = (future, final)
        return final

    def _claim(self, step: int, name: str) -> Path:
        """Rank 0: the final path of a new checkpoint, its ``.tmp`` cleared of an earlier crash's files."""
        self.root.mkdir(parents=True, exist_ok=True)
        if name:
            base, n = f"{name}-{step:08d}", 1
            final = self.root / base
            while final.exists():  # the same step again (the pointed-to one stays until the swap)
                n += 1
                final = self.root / f"{base}-{n}"
        else:
            final = self.root / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return final

    def _replace(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``; an older checkpoint of the same step is moved aside first, then removed."""
        aside = final.with_name(final.name + ".old")
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        tmp.rename(final)
        fsync_directory(self.root)
        shutil.rmtree(aside, ignore_errors=True)

    def _publish(self, tmp: Path, final: Path, name: str) -> None:
        """Rename ``tmp`` to ``final`` and point ``<name>`` at it with one atomic rename of a link."""
        tmp.rename(final)
        link = self.root / name
        if link.exists() and not link.is_symlink():  # a directory from an older recscale
            shutil.rmtree(link)
        staged = self.root / f".{name}.link"
        if staged.is_symlink() or staged.exists():
            staged.unlink()
        os.symlink(final.name, staged)
        os.replace(staged, link)
        fsync_directory(self.root)
        for old in self.root.glob(f"{name}-*"):
            if old.name != final.name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def _prune(self) -> None:
        """Rank 0: move checkpoints beyond ``keep_last`` aside (no longer complete), delete them in the background.

        Deleting hundreds of GB can take seconds (file systems that discard or replicate); the save
        that triggered it does not wait for that. Leftovers of a crash (``.tmp``, ``.old``) go too.
        """
        complete = self.list_complete()
        for old in complete[: max(0, len(complete) - self.cfg.keep_last)]:
            aside = old.with_name(old.name + ".old")
            shutil.rmtree(aside, ignore_errors=True)
            old.rename(aside)
        doomed = [*self.root.glob("*.tmp"), *self.root.glob("*.old")]
        if doomed:
            self._deleting = threading.Thread(target=_remove, args=(doomed,), name="checkpoint-prune", daemon=True)
            self._deleting.start()

    def wait(self) -> Path | None:
        """Wait for an asynchronous save to be complete; its path (None if there was none). Collective.

        Raises:
            Exception: the save's error, on every rank.
        """
        if self._pending is None:
            return None
        future, final = self._pending
        self._pending = None
        try:
            future.result()
        except CheckpointException as err:
            raise unwrap(err) from None
        return final

    def writing(self) -> bool:
        """Whether an asynchronous save is still being written (no collective)."""
        return self._pending is not None and not self._pending[0].done()

    def close(self) -> None:
        """Wait for a pending save, free the staging buffers, finish deleting old checkpoints (end of the run)."""
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        if self._deleting is not None:
            self._deleting.join()
            self._deleting = None

    # --------------------------------------------------------------------------------- finding

    def list_complete(self) -> list[Path]:
        """Renamed (complete) step checkpoints, oldest first."""
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.iterdir() if _STEP.fullmatch(p.name) and p.is_dir())

    @staticmethod
    def verify(path: Path) -> list[str]:
        """Problems of a checkpoint directory against its manifest, every file read here (empty = intact)."""
        return verify(path)

    def check(self, path: Path) -> list[str]:
        """Problems of a checkpoint, each rank hashing its own share of the files (collective); same on every rank."""
        group = self._process_group()
        if group is None or dist.get_world_size(group) == 1:
            return verify(path)
        problems = verify(path, (dist.get_rank(group), dist.get_world_size(group)))
        everyone: list[list[str] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, problems, group=group)
        return sorted({p for ps in everyone for p in ps or []})

    def latest_valid(self) -> Path | None:
        """The newest intact step checkpoint, agreed by every rank (collective).

        Broken ones are skipped with a warning that names the bad files.
        """
        self.wait()
        names: list[str] = self._broadcast([p.name for p in self.list_complete()] if self.rank == 0 else None)
        for name in reversed(names):
            candidate: Path = self.root / name
            problems = self.check(candidate)
            if not problems:
                return candidate
            if self.rank == 0:
                log.warning("skipping damaged checkpoint %s:\n  %s", candidate, "\n  ".join(problems))
        return None

    # --------------------------------------------------------------------------------- loading

    def load(self, path: Path, parallel: Any) -> dict[str, Any]:
        """Load ``path`` into ``parallel`` at any world size, plan and dense layout; return this rank's trainer state.

        The returned state has ``step`` and ``world_size`` (the writer's) besides what was saved. Ranks
        beyond the writer's world size get rank 0's trainer state; the data position is then mapped to
        the same fraction of the epoch (``trainer.data.TrainData.restore``).
        """
        self.wait()
        parts = self._parts(parallel, None)
        _check_managed_part(Path(path), parallel)
        manifest = load_parts(Path(path), parts, group=self._process_group())
        trainer = parts["trainer"]
        assert isinstance(trainer, TrainerState)
        return {**trainer.state, "step": int(manifest["step"]), "world_size": int(manifest["world_size"])}

    def load_weights(self, path: Path, parallel: Any) -> int:
        """Load only the tables' and dense weights of ``path`` into ``parallel`` (fine-tuning from another run).

        The optimizers, learning-rate schedule, data position and trainer state stay fresh. Returns the
        step the checkpoint was written at. Any table or dense tensor of another shape is refused, named.
        """
        self.wait()
        dense = parallel.dense.checkpoint_state()
        dense.weights_only = True
        parts = {"sparse": SparseState(parallel.sparse, parallel.updater.table_optimizer, weights_only=True)}
        _check_managed_part(Path(path), parallel)
        manifest = load_parts(
            Path(path), {**parts, "dense": dense, **_managed_part(parallel)}, group=self._process_group()
        )
        return int(manifest["step"])


def _managed_part(parallel: Any) -> dict[str, Checkpointable]:
    """The managed-collision tables' part, when the model has such tables."""
    managed = getattr(getattr(parallel, "model", None), "managed_ids", None)
    return {} if managed is None else {MANAGED_PART: ManagedIdsState(managed)}


def _check_managed_part(path: Path, parallel: Any) -> None:
    """A model with managed-collision tables needs their slot maps: refuse a checkpoint without them, by name."""
    if _managed_part(parallel) and not (path / MANAGED_PART).is_dir():
        raise ValueError(
            f"{path}: the checkpoint has no managed-collision state, but embeddings.tables has collisions: managed "
            "tables (it was written by a run whose tables were not managed)"
        )


def _remove(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


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


__all__ = [
    "CHECKPOINTS",
    "FORMAT",
    "MANIFEST",
    "METADATA",
    "CheckpointManager",
    "checkpoint_run_dir",
    "read_manifest",
    "remove_partial",
    "verify",
]
