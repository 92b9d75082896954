"""Stream a delimited text file (TSV / CSV, plain or gzip) as Arrow blocks of strings, in bounded memory.

``pyarrow.csv.open_csv`` parses one block (``block_mb``) at a time. Every column is read as a string,
so the converters do the typing themselves and can name the line and column of a bad value. Lines
with the wrong number of fields are recorded (their line numbers come from the parser) and either
raised or skipped; the line number of any parsed row is recovered from them. Progress is the
position in the (compressed) input file.
"""

from __future__ import annotations

import bisect
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv

from recscale.data.errors import BadRowCounter, DataError, RowLocation


def _open_raw(path: Path) -> tuple[BinaryIO, pa.NativeFile]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by TextBlocks.close
    stream: pa.NativeFile = pa.PythonFile(raw, mode="r")
    if path.suffix == ".gz":
        stream = pa.CompressedInputStream(stream, "gzip")
    return raw, stream


def unreadable(path: Path, err: BaseException) -> DataError:
    """The error for a file that stops being readable (a truncated download, a damaged gzip stream)."""
    if path.suffix == ".gz":
        return DataError(f"{path}: the gzip stream is truncated or damaged ({err}); was the download complete?")
    return DataError(f"{path}: cannot read the file ({err})")


def read_header(path: Path, delimiter: str) -> list[str]:
    """The column names on the first line of a CSV file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:  # type: ignore[operator]
            line = f.readline().rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise unreadable(path, err) from None
    if not line:
        raise DataError(f"{path}: line 1: expected a header line with column names, got an empty line")
    return line.split(delimiter)


class TextBlocks:
    """Blocks of string columns from one text file, with line numbers (see the module docstring).

    Args:
        path: the file (``.gz`` is decompressed on the fly).
        column_names: names of all fields, or None to take them from a header line.
        delimiter: field separator.
        include: the columns to keep (None = all).
        block_mb: parse block size in MiB (bounds memory).
        skip_bad_lines: skip lines with the wrong number of fields (counted in ``counter``) instead of raising.
        counter: where skipped lines are counted.
    """

    def __init__(
        self,
        path: Path,
        column_names: list[str] | None,
        delimiter: str,
        include: list[str] | None,
        block_mb: int,
        skip_bad_lines: bool,
        counter: BadRowCounter,
    ) -> None:
        self.path = path
        self.header_lines = 0 if column_names is not None else 1
        names = column_names if column_names is not None else read_header(path, delimiter)
        self.num_fields = len(names)
        self.delimiter = delimiter
        self.skip_bad_lines = skip_bad_lines
        self.counter = counter
        self.bad_lines: list[int] = []
        self._first_bad: tuple[int, int, str] | None = None
        self._raw, stream = _open_raw(path)
        try:
            self._reader = self._open_csv(stream, names, include, block_mb)
        except pa.ArrowInvalid as err:
            self.close()
            raise DataError(f"{path}: cannot parse: {err}") from None
        except (OSError, EOFError) as err:
            self.close()
            raise unreadable(path, err) from None

    def _open_csv(
        self, stream: pa.NativeFile, names: list[str], include: list[str] | None, block_mb: int
    ) -> pa_csv.CSVStreamingReader:
        delimiter = self.delimiter
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(
                use_threads=False,
                block_size=block_mb << 20,
                column_names=names,
                skip_rows=self.header_lines,
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if delimiter == "," else False,
                double_quote=delimiter == ",",
                escape_char=False,
                ignore_empty_lines=False,
                invalid_row_handler=self._on_invalid,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=include,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )

    def _on_invalid(self, row: pa_csv.InvalidRow) -> str:
        number = row.number if row.number is not None else -1
        bisect.insort(self.bad_lines, number)
        if self._first_bad is None:
            self._first_bad = (number, row.actual_columns, (row.text or "")[:120])
        if self.skip_bad_lines:
            self.counter.add(1, {f"line: expected {self.num_fields} fields": 1})
        return "skip"

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch, int]]:
        """``(block, index of its first row among all parsed rows of the file)``."""
        first = 0
        try:
            for block in self._reader:
                if self._first_bad is not None and not self.skip_bad_lines:
                    line, got, text = self._first_bad
                    raise DataError(
                        f"{RowLocation(str(self.path), None, line).describe()}: expected {self.num_fields} fields "
                        f"separated by {self._delimiter_name()}, got {got}: {text!r} "
                        "(set on_bad_row: skip to skip such lines and count them)"
                    )
                yield block, first
                first += block.num_rows
        except pa.ArrowInvalid as err:
            raise DataError(f"{self.path}: cannot parse: {err}") from None
        except (OSError, EOFError) as err:  # ArrowIOError is an OSError
            raise unreadable(self.path, err) from None
        finally:
            self.close()

    def _delimiter_name(self) -> str:
        return {"\t": "tabs", ",": "commas"}.get(self.delimiter, repr(self.delimiter))

    def line_of(self, row: int) -> int:
        """1-based line number of parsed row ``row`` (0-based among all parsed rows)."""
        line = row + 1 + self.header_lines
        for bad in self.bad_lines:
            if bad <= line:
                line += 1
            else:
                break
        return line

    def position(self) -> int:
        """Bytes of the input file consumed so far (compressed bytes for ``.gz``)."""
        return self._raw.tell() if not self._raw.closed else 0

    def close(self) -> None:
        """Close the input file."""
        if not self._raw.closed:
            self._raw.close()
