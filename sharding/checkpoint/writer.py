"""Writing a checkpoint's files: DCP's file writer with every file hashed on its way to disk.

``DigestWriter`` is DCP's file writer (one file per rank and I/O thread, fsync'd) whose streams hash
every byte they write: each rank knows the SHA-256 of the files *it* wrote the moment they are
written, without reading them back. The digests (and each rank's small shared JSON) travel to the
coordinator inside DCP's own gather of write results, and the coordinator hands them, with the digest
of the ``.metadata`` index it writes, to a callback that writes the manifest. While writing, each
stream asks the kernel to start writing back what it has written so far (every 64 MiB), so the disk
works while the next bytes are serialised and hashed, and a checkpoint of hundreds of GB does not
crowd the page cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

METADATA = ".metadata"
"""DCP's index of a checkpoint (written by the coordinator)."""
_DIGEST = "__recscale_digest__/"
_SHARED = "__recscale_shared__"
_BLOCK = 8 << 20
_WRITEBACK = 64 << 20
"""Bytes after which a stream asks the kernel to start writing back (and then forget) what it wrote."""


@dataclass(frozen=True)
class FileDigest:
    """Size and SHA-256 of one written file."""

    bytes: int
    sha256: str


class _HashingStream(io.RawIOBase):
    """A file opened for writing that hashes what passes through it (``write``, ``tell``, ``fileno``)."""

    def __init__(self, path: Path, done: Callable[[str, FileDigest], None]) -> None:
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._name = path.name
        self._hash = hashlib.sha256()
        self._size = 0
        self._written_back = 0
        self._done = done

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._file.write(view)
        self._size += len(view)
        if self._size - self._written_back >= _WRITEBACK and hasattr(os, "posix_fadvise"):
            # start the disk on what is written (and drop it from the cache once written) while we go on
            self._file.flush()
            os.posix_fadvise(self.fileno(), self._written_back, self._size - self._written_back, os.POSIX_FADV_DONTNEED)
            self._written_back = self._size
        return len(view)

    def tell(self) -> int:
        return self._size

    def fileno(self) -> int:
        return self._file.fileno()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            self._done(self._name, FileDigest(self._size, self._hash.hexdigest()))


class _HashingFileSystem(FileSystem):
    """DCP's local file system, with every file opened for writing hashed on the way."""

    def __init__(self) -> None:
        self.digests: dict[str, FileDigest] = {}
        self._lock = threading.Lock()

    def _record(self, name: str, digest: FileDigest) -> None:
        with self._lock:
            self.digests[name] = digest

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        stream = _HashingStream(Path(path), self._record)
        try:
            yield cast(io.IOBase, stream)
        finally:
            stream.close()


Finish = Callable[[dict[str, tuple[int, FileDigest]], list[dict[str, Any]]], None]
"""Coordinator's callback: {file: (writer rank, digest)} of every file written, every rank's shared JSON."""


class DigestWriter(FileSystemWriter):
    """DCP's file writer that hashes the files as it writes them and reports the digests to the coordinator.

    Args:
        path: the checkpoint directory.
        thread_count: I/O threads (and data files) per rank.
        own_files: files this rank wrote itself beside DCP's (path relative to ``path`` -> digest).
        shared: this rank's JSON for the coordinator (gathered with the digests).
        on_finish: called on the coordinator once every rank's files and the ``.metadata`` are written.
    """

    def __init__(
        self,
        path: Path,
        thread_count: int,
        own_files: dict[str, FileDigest],
        shared: dict[str, Any],
        on_finish: Finish,
    ) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=thread_count, overwrite=False)
        self.fs: _HashingFileSystem = _HashingFileSystem()
        self.own_files = own_files
        self.shared = shared
        self.on_finish = on_finish

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """DCP's writes, then one extra result per file written (its digest) and one with the shared JSON."""
        written = super().write_data(plan, planner).value()
        digests = {**self.fs.digests, **self.own_files}
        extra = [WriteResult(MetadataIndex(_DIGEST + name), d.bytes, d) for name, d in sorted(digests.items())]
        extra.append(WriteResult(MetadataIndex(_SHARED), 0, json.dumps(self.shared)))
        out: Future[list[WriteResult]] = Future()
        out.set_result(written + extra)
        return out

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """DCP's ``.metadata`` from the real results; the digests and shared JSON go to ``on_finish``."""
        files: dict[str, tuple[int, FileDigest]] = {}
        shared: list[dict[str, Any]] = []
        kept: list[list[WriteResult]] = []
        for rank, rank_results in enumerate(results):
            mine = []
            for result in rank_results:
                fqn = result.index.fqn
                if fqn.startswith(_DIGEST):
                    files[fqn[len(_DIGEST) :]] = (rank, result.storage_data)
                elif fqn == _SHARED:
                    shared.append(json.loads(result.storage_data))
                else:
                    mine.append(result)
            kept.append(mine)
        super().finish(metadata, kept)
        files[METADATA] = (self.rank or 0, self.fs.digests[METADATA + ".tmp"])
        self.on_finish(files, shared)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 8 MiB blocks into one reused buffer."""
    h = hashlib.sha256()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def write_durably(path: Path, text: str) -> FileDigest:
    """Write ``text`` to a temporary name, fsync, rename; return its digest."""
    data = text.encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return FileDigest(len(data), hashlib.sha256(data).hexdigest())


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["METADATA", "DigestWriter", "FileDigest", "fsync_directory", "sha256_file", "write_durably"]
