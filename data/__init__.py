"""Data: feature schema, Parquet streaming per rank, converters, the planted-truth generator.

The trainer's entry points:

* ``prepare_data(data_cfg, embeddings) -> DataPaths``: generate (synthetic, cached) or check the data.
* ``ParquetBatchReader(path, features, embeddings, reader, batch_size=, rank=, world_size=, mode=)``:
  a resumable per-rank iterable of ``Batch`` (``num_batches``, ``state_dict``, ``load_state_dict``,
  ``stats``).
* ``generate_synthetic(data_cfg, embeddings, out_dir)``: planted-truth Parquet + ``claims.json``.
* ``convert_criteo`` / ``convert_csv``: raw text -> Parquet + ``schema.json`` (``recscale data convert``).

See ``docs/data.md``.
"""

from recscale.data.batch import Batch
from recscale.data.converters import convert_criteo, convert_csv
from recscale.data.errors import DataError
from recscale.data.inspection import inspect_path
from recscale.data.prepare import DataPaths, prepare_data
from recscale.data.reader import ParquetBatchReader
from recscale.data.synthetic import generate_synthetic

__all__ = [
    "Batch",
    "DataError",
    "DataPaths",
    "ParquetBatchReader",
    "convert_criteo",
    "convert_csv",
    "generate_synthetic",
    "inspect_path",
    "prepare_data",
]
