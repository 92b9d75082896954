"""The converters' public functions: Criteo TSV and headed CSV -> ``out_dir/{train,valid}/`` + ``schema.json``.

Layout of the output (what ``data.train_path`` / ``valid_path`` / ``test_path`` point at)::

    out_dir/train/part-00000.parquet ...   rows routed to training
    out_dir/valid/part-00000.parquet ...   --valid inputs, or a valid_fraction of the inputs
    out_dir/test/part-00000.parquet ...    --test inputs (held out; only when there are some)
    out_dir/schema.json                    rows, label rates, skipped rows, table rows needed, settings
    out_dir/vocab/<column>.npz             (vocab mode) the vocabularies, reusable with --vocab
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from recscale.configs.schema import DataConfig, EmbeddingsConfig
from recscale.data.convert import InputFile, convert
from recscale.data.criteo import LAYOUTS, criteo_parser
from recscale.data.csv_source import csv_parser
from recscale.data.errors import DataError
from recscale.data.prepare import CONVERT_STATS


def _inputs(
    train: list[str | Path], valid: list[str | Path], split_train: bool, test: list[str | Path] | None = None
) -> list[InputFile]:
    items = []
    for split, paths in (("auto" if split_train else "train", train), ("valid", valid), ("test", test or [])):
        for path in paths:
            p = Path(path).expanduser()
            if not p.is_file():
                raise DataError(f"{p}: no such input file")
            items.append(InputFile(p, split, len(items)))  # type: ignore[arg-type]
    if not items:
        raise DataError("no input files given")
    return items


def _vocab_dir(vocab: str | Path | None, layout: str | None) -> Path | None:
    """The ``vocab/`` folder of an earlier conversion; refuses one made from the other Criteo layout."""
    if vocab is None:
        return None
    root = Path(vocab).expanduser()
    folder = root / "vocab" if (root / "vocab").is_dir() else root
    stats = folder.parent / CONVERT_STATS
    if layout is not None and stats.is_file():
        theirs = json.loads(stats.read_text()).get("layout")
        if theirs is not None and theirs != layout:
            raise DataError(
                f"{folder}: this vocabulary was built from Criteo {theirs} data and cannot encode {layout} data "
                "(the two releases hash their categorical values differently)"
            )
    return folder


def convert_criteo(
    inputs: list[str | Path],
    out_dir: str | Path,
    data: DataConfig,
    embeddings: EmbeddingsConfig,
    *,
    layout: Literal["kaggle", "terabyte"] = "kaggle",
    valid_inputs: list[str | Path] | None = None,
    test_inputs: list[str | Path] | None = None,
    vocab: str | Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Convert Criteo TSV files (Kaggle ``train.txt`` or 1TB ``day_N[.gz]``); returns the stats.

    Args:
        inputs: training files (split by ``data.convert.valid_fraction`` when it is > 0).
        out_dir: output directory (must not exist or be empty).
        data: the feature schema (Criteo column names) and ``data.convert`` settings.
        embeddings: the tables (their rows bound the ids).
        layout: which Criteo release the files are (recorded; guards vocabulary reuse).
        valid_inputs: files whose rows all go to ``valid/`` (e.g. ``day_23``).
        test_inputs: held-out files whose rows all go to ``test/`` (``data.test_path``).
        vocab: an earlier conversion's directory (or its ``vocab/``) to encode with instead of counting.
        progress: show a progress bar on a terminal.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    items = _inputs(inputs, valid_inputs or [], data.convert.valid_fraction > 0, test_inputs)
    info = {"format": "criteo_tsv", "layout": layout}
    return convert(
        data,
        embeddings,
        items,
        criteo_parser(data),
        Path(out_dir).expanduser(),
        info=info,
        vocab_dir=_vocab_dir(vocab, layout),
        progress=progress,
    )


def convert_csv(
    inputs: list[str | Path],
    out_dir: str | Path,
    data: DataConfig,
    embeddings: EmbeddingsConfig,
    *,
    valid_inputs: list[str | Path] | None = None,
    test_inputs: list[str | Path] | None = None,
    vocab: str | Path | None = None,
    delimiter: str = ",",
    progress: bool = True,
) -> dict[str, object]:
    """Convert CSV files with a header (column roles from ``data.features``); returns the stats.

    Args are as for ``convert_criteo``; ``delimiter`` separates the fields.
    """
    items = _inputs(inputs, valid_inputs or [], data.convert.valid_fraction > 0, test_inputs)
    info = {"format": "csv", "delimiter": delimiter}
    return convert(
        data,
        embeddings,
        items,
        csv_parser(data, delimiter=delimiter),
        Path(out_dir).expanduser(),
        info=info,
        vocab_dir=_vocab_dir(vocab, None),
        progress=progress,
    )
