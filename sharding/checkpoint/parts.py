"""Write a checkpoint's parts into one directory, and read them back: the one writer and the one reader.

``save_parts`` (collective) writes every part: tensors through DCP (each rank its own files, hashed
as they are written), per-rank JSON beside them, and, once every rank is done, ``manifest.json`` from
rank 0 with every file's size, SHA-256 and writer. ``load_parts`` (collective) asks each part for its
targets given what the directory holds, reads them in one DCP load, and hands the parts their state.
``CheckpointManager`` adds the run directory's policy on top (names, rotation, ``best``, resume).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from recscale.sharding.checkpoint.planner import LoadPlanner, SavePlanner
from recscale.sharding.checkpoint.protocol import Checkpointable, Saved
from recscale.sharding.checkpoint.reader import SafeReader, read_metadata
from recscale.sharding.checkpoint.staging import Stager
from recscale.sharding.checkpoint.tree import join, merge, split
from recscale.sharding.checkpoint.writer import DigestWriter, FileDigest, fsync_directory, write_durably

MANIFEST = "manifest.json"
FORMAT = 2
"""Version of the checkpoint layout (1: DeepSpeed's files and pickled trainer state; not readable)."""


def unwrap(err: CheckpointException) -> BaseException:
    """The original error of the lowest failing rank, of the ``CheckpointException`` DCP wraps every rank's in.

    DCP's exception is a ``BaseException`` that prints every rank's traceback; the error inside it is the
    one-line message a user needs (a missing entry, a refused pickle, a full disk).
    """
    rank = min(err.failures)
    original, _ = err.failures[rank]
    if isinstance(original, Exception):
        original.add_note(f"(on rank {rank}, in torch.distributed.checkpoint)")
        return original
    return err


@contextmanager
def _single_process(one: bool) -> Iterator[None]:
    """Quiet DCP's warning that it runs in a single process, where that is meant."""
    with warnings.catch_warnings():
        if one:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _rank(group: Any) -> tuple[int, int]:
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def read_manifest(path: Path) -> dict[str, Any]:
    """A checkpoint's manifest, after checking it is this format.

    Raises:
        ValueError: unreadable, or written by a recscale with another checkpoint format (one line).
    """
    where = Path(path) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{where}: checkpoint format {manifest.get('format', 1)}, this recscale reads format {FORMAT} "
            "(format 1 held pickled trainer state and DeepSpeed's own files; use the recscale that wrote it)"
        )
    return manifest


def save_parts(
    directory: Path,
    parts: dict[str, Checkpointable],
    *,
    step: int = 0,
    group: Any = None,
    io_threads: int = 1,
    stager: Stager | None = None,
    on_complete: Callable[[], None] | None = None,
) -> Future[Any] | None:
    """Write ``parts`` into ``directory`` (collective; the directory must not hold a checkpoint yet).

    Args:
        directory: where to write.
        parts: the parts, by name (their entries are ``<name>.<...>``).
        step: the training step, recorded in the manifest.
        group: process group of the collectives (None: the default group).
        io_threads: DCP writer threads (and data files) per rank.
        stager: given: save asynchronously, staging the tensors through it; returns the write's future.
        on_complete: run on rank 0 after the manifest is written (e.g. a rename into place).
    """
    rank, world = _rank(group)
    directory = Path(directory)
    tensors: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    own: dict[str, FileDigest] = {}
    for name, part in parts.items():
        part_tensors, part_json = split(part.state_dict(), name, mark_tensors=part.per_rank)
        if part.per_rank:
            if part_tensors:
                tensors[name] = {f"rank{rank}": part_tensors}
            (directory / name).mkdir(parents=True, exist_ok=True)
            own[f"{name}/rank{rank}.json"] = write_durably(directory / name / f"rank{rank}.json", json.dumps(part_json))
        else:
            if part_tensors:
                tensors[name] = part_tensors
            shared[name] = part_json

    def finish(files: dict[str, tuple[int, FileDigest]], every_shared: list[dict[str, Any]]) -> None:
        names = sorted({k for s in every_shared for k in s})
        manifest = {
            "format": FORMAT,
            "step": step,
            "world_size": world,
            "parts": {k: merge([s.get(k, {}) for s in every_shared]) for k in names},
            "files": {
                rel: {"bytes": digest.bytes, "sha256": digest.sha256, "rank": writer}
                for rel, (writer, digest) in sorted(files.items())
            },
        }
        write_durably(directory / MANIFEST, json.dumps(manifest, indent=1))
        fsync_directory(directory)
        if on_complete is not None:
            on_complete()

    writer = DigestWriter(directory, io_threads, own, shared, finish)
    one = not dist.is_initialized()  # a single process without a process group (tools, tests)
    try:
        if stager is None:
            with _single_process(one):
                dcp.save(tensors, storage_writer=writer, planner=SavePlanner(), process_group=group, no_dist=one)
            return None
        future = dcp.async_save(
            tensors, storage_writer=writer, planner=SavePlanner(), process_group=group, async_stager=stager, no_dist=one
        )
    except CheckpointException as err:
        raise unwrap(err) from None
    assert isinstance(future, Future)
    return future


def load_parts(directory: Path, parts: dict[str, Checkpointable], *, group: Any = None) -> dict[str, Any]:
    """Load ``parts`` from ``directory`` at this run's world size and layouts (collective); returns the manifest.

    A per-rank part of a rank beyond the writer's world size reads rank 0's state.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    rank, _ = _rank(group)
    entries = dict(read_metadata(directory).state_dict_metadata)
    saved_world = int(manifest["world_size"])
    targets: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}
    for name, part in parts.items():
        if part.per_rank:
            source = f"rank{rank if rank < saved_world else 0}"
            values[name] = json.loads((directory / name / f"{source}.json").read_text())
            saved = Saved(directory, f"{name}.{source}", entries, values[name], saved_world, group)
        else:
            values[name] = manifest["parts"].get(name, {})
            saved = Saved(directory, name, entries, values[name], saved_world, group)
        loaded[name] = part.load_targets(saved)
        if loaded[name]:
            targets[name] = {source: loaded[name]} if part.per_rank else loaded[name]
    one = not dist.is_initialized()
    try:
        with _single_process(one):
            dcp.load(
                targets, storage_reader=SafeReader(directory), planner=LoadPlanner(), process_group=group, no_dist=one
            )
    except CheckpointException as err:
        raise unwrap(err) from None
    for name, part in parts.items():
        part.load_state_dict(join(loaded[name], values[name]))
    return manifest


__all__ = ["FORMAT", "MANIFEST", "load_parts", "read_manifest", "save_parts", "unwrap"]
