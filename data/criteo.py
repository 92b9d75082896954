"""Criteo display-ads TSV -> ``RawRows``: both the Kaggle (``train.txt``) and the 1TB (``day_N``) layout.

Both layouts are the same 40 TAB-separated fields without a header: the 0/1 label, 13 integer
features ``I1..I13`` (may be negative or empty) and 26 categorical features ``C1..C26`` (8 hex digits,
or empty). What differs, and how it is handled:

* The 1TB days usually come gzip-compressed (``day_0.gz``); ``.gz`` inputs are decompressed while
  streaming (either layout).
* The two releases hash their categorical values differently, so a vocabulary built on one must never
  encode the other: ``schema.json`` records the layout, and ``--vocab`` refuses a vocabulary of the
  other layout.
* Kaggle's ``test.txt`` has no label (39 fields): it is rejected as a malformed line (wrong field
  count), since rows without a label cannot train or evaluate.

The column names in ``data.features`` must be Criteo's (``label``, ``I1``.., ``C1``..); a config may
use a subset. Integers get ``data.convert.dense_transform`` (``log1p``: log(1 + max(x, 0))); an empty
integer is ``dense_missing``. An empty categorical is the missing row (0) of its table.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from recscale.configs.schema import DataConfig
from recscale.data.convert import InputFile, Parser
from recscale.data.errors import BadRowCounter, DataError, RowLocation
from recscale.data.raw import RawRows, RowChecks, parse_hex, parse_integers, parse_labels, transform_dense
from recscale.data.remap import hash_sources, source_column
from recscale.data.text_source import TextBlocks

LABEL = "label"
INTEGERS = [f"I{i}" for i in range(1, 14)]
CATEGORICALS = [f"C{i}" for i in range(1, 27)]
COLUMNS = [LABEL, *INTEGERS, *CATEGORICALS]
LAYOUTS = ("kaggle", "terabyte")
BLOCK_MB = 16


def check_criteo_features(data: DataConfig) -> None:
    """Raise unless the feature schema uses Criteo's column names (no sequences)."""
    f = data.features
    wrong = [(f"data.features.labels[{i}]", n) for i, n in enumerate(f.labels) if n != LABEL]
    wrong += [(f"data.features.dense[{i}]", n) for i, n in enumerate(f.dense) if n not in INTEGERS]
    derived = hash_sources(data)  # double_graphhash features filled from another column
    wrong += [
        (f"data.features.sparse[{i}].name", s.name)
        for i, s in enumerate(f.sparse)
        if s.name not in CATEGORICALS and s.name not in derived
    ]
    if wrong:
        key, name = wrong[0]
        raise DataError(
            f"{key}: {name!r} is not a Criteo column; expected label 'label', dense I1..I13, sparse C1..C26"
        )
    if f.sequences or f.domain:
        raise DataError("data.features: Criteo data has no sequences or domain column; remove them from the config")


def criteo_parser(data: DataConfig, block_mb: int = BLOCK_MB) -> Parser:
    """A parser of Criteo TSV files into ``RawRows`` for the converter."""
    check_criteo_features(data)
    f, c = data.features, data.convert
    skip = c.on_bad_row == "skip"
    include = [LABEL, *f.dense, *dict.fromkeys(source_column(data, s.name) for s in f.sparse)]

    def parse(item: InputFile, counter: BadRowCounter) -> Iterator[tuple[RawRows, int]]:
        blocks = TextBlocks(item.path, COLUMNS, "\t", include, block_mb, skip, counter)
        for block, first in blocks:
            n = block.num_rows

            def locate(i: int, first: int = first) -> RowLocation:
                return RowLocation(str(item.path), None, blocks.line_of(first + i))

            checks = RowChecks(n, skip, locate)
            labels = parse_labels(block.column(LABEL), LABEL, checks)[:, None]
            dense = np.empty((n, len(f.dense)), dtype=np.float32)
            dense_missing = {}
            for j, name in enumerate(f.dense):
                values, missing = parse_integers(block.column(name), name, checks)
                dense[:, j] = transform_dense(values.astype(np.float64), missing, c.dense_transform, c.dense_missing)
                dense_missing[name] = int(missing.sum())
            keys, missing_ids = [], []
            for s in f.sparse:
                column = source_column(data, s.name)
                k, m = parse_hex(block.column(column), column, checks)
                keys.append(k)
                missing_ids.append(m)
            raw = RawRows(
                labels=labels,
                dense=dense,
                keys=keys,
                missing=missing_ids,
                sequences=[],
                timestamps=[],
                domain=None,
                row_ids=np.arange(first, first + n, dtype=np.int64),
                checks=checks,
                dense_missing=dense_missing,
            )
            yield raw, blocks.position()

    return parse
