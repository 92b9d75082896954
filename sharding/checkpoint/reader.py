"""Reading a checkpoint: DCP's index without running code, and tensors straight into their targets.

DCP keeps its index (``.metadata``) as a pickle; ``read_metadata`` reads it with an unpickler that
knows only DCP's metadata classes, so a checkpoint from elsewhere cannot run code when it is opened.

``SafeReader`` is DCP's file reader with that index and a direct path for tensor data. DCP stores
each saved piece as a ``torch.save`` zip whose one data record holds the piece's bytes, row-major;
DCP's own reader loads that into a fresh tensor and copies it into the target. Where the range asked
for is contiguous in the piece (whole pieces, and row ranges: ZeRO fragments, row-wise shards) and the
target is a contiguous CPU tensor of the same dtype, ``SafeReader`` reads the bytes into the target
instead: one pass, no page faults on fresh memory (at least a doubling of the load rate here). The zip
is only indexed (``zipfile``), never unpickled; anything unexpected in it takes DCP's path.
``tests/sharding/test_checkpoint_entries.py`` pins the zip layout relied on.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

from recscale.sharding.checkpoint.writer import METADATA

_DATA_RECORD = re.compile(r"[^/]+/data/\d+")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")

_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else (no other class can be named, so no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index: refused")


def read_metadata(directory: Path) -> Metadata:
    """DCP's index of the checkpoint in ``directory``, read safely.

    Raises:
        ValueError: the index names anything but DCP's metadata classes (one line, naming the file).
    """
    path = Path(directory) / METADATA
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: {err}") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{path}: not a DCP checkpoint index")
    return metadata


class _Slice(io.RawIOBase):
    """A byte range of an open file, as a seekable file of its own (what ``zipfile`` needs)."""

    def __init__(self, file: Any, offset: int, length: int) -> None:
        super().__init__()
        self._file, self._offset, self._length, self._pos = file, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + pos, 0), self._length)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._length - self._pos]
        self._file.seek(self._offset + self._pos)
        n: int = self._file.readinto(view)
        self._pos += n
        return n


def tensor_bytes(file: Any, offset: int, length: int) -> tuple[int, int] | None:
    """(file position, size) of the tensor bytes in the ``torch.save`` zip at ``[offset, offset + length)``.

    None when the zip is not one little-endian, uncompressed data record (then DCP's reader is used).
    """
    piece = _Slice(file, offset, length)
    try:
        archive = zipfile.ZipFile(piece)
        records = [i for i in archive.infolist() if _DATA_RECORD.fullmatch(i.filename)]
        order = [n for n in archive.namelist() if n.endswith("/byteorder")]
        if len(records) != 1 or records[0].compress_type != zipfile.ZIP_STORED:
            return None
        if order and archive.read(order[0]) != b"little":
            return None
        piece.seek(records[0].header_offset)
        header = _LOCAL_HEADER.unpack(piece.read(_LOCAL_HEADER.size))
    except (zipfile.BadZipFile, struct.error, KeyError, ValueError):
        return None
    if header[0] != b"PK\x03\x04":
        return None
    start = records[0].header_offset + _LOCAL_HEADER.size + header[-2] + header[-1]
    return offset + start, records[0].file_size


class SafeReader(FileSystemReader):
    """DCP's file reader: ``.metadata`` read by ``read_metadata``, tensor bytes read into their targets.

    What does not take the direct path loads through DCP's reader (``torch.load`` with ``weights_only``).
    """

    direct_reads = 0
    """Reads that went straight into their target (for tests and benchmarks)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's index, without running code."""
        metadata = read_metadata(Path(self.path))
        storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """DCP's set-up; keeps the index of saved pieces (their shapes and dtypes)."""
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._entries = metadata.state_dict_metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Direct reads where possible, file by file in order; DCP's reader for the rest."""
        per_file: dict[str, list[ReadItem]] = {}
        rest: list[ReadItem] = []
        for item in plan.items:
            if item.type == LoadItemType.TENSOR and not self.storage_data[item.storage_index].transform_descriptors:
                per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
            else:
                rest.append(item)
        for name, items in per_file.items():
            spans: dict[MetadataIndex, tuple[int, int] | None] = {}
            with open(Path(self.path) / name, "rb", buffering=0) as file:
                for item in sorted(items, key=lambda i: self.storage_data[i.storage_index].offset):
                    if not self._read_direct(file, item, planner, spans):
                        rest.append(item)
        if rest:
            super().read_data(dataclasses.replace(plan, items=rest), planner).wait()
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_direct(
        self, file: Any, item: ReadItem, planner: LoadPlanner, spans: dict[MetadataIndex, tuple[int, int] | None]
    ) -> bool:
        """Read ``item``'s bytes into its target if the range is contiguous in the piece and in the target."""
        saved = self._entries.get(item.storage_index.fqn)
        if not isinstance(saved, TensorStorageMetadata) or item.storage_index.index is None:
            return False
        sizes = list(saved.chunks[item.storage_index.index].sizes)
        whole_rows = all(
            o == 0 and n == s for o, n, s in zip(item.storage_offsets[1:], item.lengths[1:], sizes[1:], strict=True)
        )
        target = planner.resolve_tensor(item).detach()
        if not whole_rows or not target.is_cpu or not target.is_contiguous() or target.dtype != saved.properties.dtype:
            return False
        if item.storage_index not in spans:
            info = self.storage_data[item.storage_index]
            spans[item.storage_index] = tensor_bytes(file, info.offset, info.length)
        span = spans[item.storage_index]
        element = target.element_size()
        if span is None or span[1] != math.prod(sizes) * element:
            return False
        first_row = item.storage_offsets[0] if sizes else 0
        file.seek(span[0] + first_row * math.prod(sizes[1:]) * element)
        view = target.reshape(-1).view(torch.uint8).numpy().data.cast("B")
        done = 0
        while done < len(view):
            n = file.readinto(view[done:])
            if not n:
                return False
            done += n
        planner.commit_tensor(item, target)
        SafeReader.direct_reads += 1
        return True


__all__ = ["SafeReader", "read_metadata", "tensor_bytes"]
