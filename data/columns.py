"""The feature schema as Parquet columns: which columns to read and which Arrow types they must have.

On disk (one row = one example):

======================  ==========================================  ==============================
role                    column type                                 Batch field
======================  ==========================================  ==============================
label (one per task)    integer, floating or bool, values 0 / 1     ``labels [B, T]``
                        (``value_labels``: any finite number)
dense                   floating or integer, finite                 ``dense [B, N]``
sparse, single-hot      integer (null = empty bag)                  ``sparse`` KJT, length 1 (0)
sparse, multi-hot       list<integer> (null = empty bag)            ``sparse`` KJT
sequence ids            list<integer>, oldest first                 ``sequences`` KJT
sequence timestamps     list<integer>, same lengths as the ids      ``sequence_timestamps`` KJT
domain                  integer >= 0                                ``domain [B]``
window                  integer in [0, num_windows)                 ``window [B]``
teacher                 floating or list<floating> [T]; null = miss ``teacher [B, T]`` (NaN = miss)
oracle                  floating in [0, 1], or list<floating> [T]   ``oracle [B, T]``
======================  ==========================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig
from recscale.data.errors import DataError


def table_rows(embeddings: EmbeddingsConfig) -> dict[str, int]:
    """Rows of every embedding table, by table name."""
    return {t.name: t.num_embeddings for t in embeddings.tables}


def raw_id_tables(embeddings: EmbeddingsConfig) -> frozenset[str]:
    """Names of the ``collisions: managed`` tables, whose features carry raw 64-bit ids (any int64).

    The model maps those ids to slots, so the data side passes them through unchecked and unchanged.
    """
    return frozenset(t.name for t in embeddings.tables if t.collisions == "managed")


def _is_list(tp: pa.DataType) -> bool:
    return bool(pa.types.is_list(tp) or pa.types.is_large_list(tp) or pa.types.is_fixed_size_list(tp))


def _is_int(tp: pa.DataType) -> bool:
    return bool(pa.types.is_integer(tp))


def _is_number(tp: pa.DataType) -> bool:
    return bool(pa.types.is_integer(tp) or pa.types.is_floating(tp))


@dataclass(frozen=True)
class ColumnSpec:
    """One column the feature schema needs."""

    name: str
    """Column name."""
    role: str
    """``label``, ``dense``, ``sparse``, ``sequence``, ``timestamps``, ``domain`` or ``oracle``."""
    expected: str
    """The accepted Arrow types, in words (for messages)."""

    def accepts(self, tp: pa.DataType) -> bool:
        """Whether a column of Arrow type ``tp`` can serve this role."""
        if self.role == "label":
            return _is_number(tp) or pa.types.is_boolean(tp)
        if self.role == "dense":
            return _is_number(tp)
        if self.role == "sparse":
            return _is_int(tp) or (_is_list(tp) and _is_int(tp.value_type))
        if self.role in ("sequence", "timestamps"):
            return _is_list(tp) and _is_int(tp.value_type)
        if self.role in ("domain", "window"):
            return _is_int(tp)
        if self.role in ("oracle", "teacher"):
            return pa.types.is_floating(tp) or (_is_list(tp) and pa.types.is_floating(tp.value_type))
        raise AssertionError(f"unknown role {self.role}")


def column_specs(features: FeatureSchemaConfig, with_oracle: bool) -> list[ColumnSpec]:
    """Every column the schema reads, in a fixed order (labels, dense, sparse, sequences, domain, oracle)."""
    kinds = {c: "integer or floating" for c in features.value_labels}
    out = [ColumnSpec(c, "label", kinds.get(c, "integer, floating or bool (0/1)")) for c in features.labels]
    out += [ColumnSpec(c, "dense", "integer or floating") for c in features.dense]
    out += [ColumnSpec(s.name, "sparse", "integer or list<integer>") for s in features.sparse]
    for q in features.sequences:
        out.append(ColumnSpec(q.ids, "sequence", "list<integer>"))
        if q.timestamps:
            out.append(ColumnSpec(q.timestamps, "timestamps", "list<integer>"))
    if features.domain:
        out.append(ColumnSpec(features.domain, "domain", "integer"))
    if features.window:
        out.append(ColumnSpec(features.window, "window", "integer"))
    if features.teacher:
        out.append(ColumnSpec(features.teacher, "teacher", "floating or list<floating>"))
    if with_oracle and features.oracle:
        out.append(ColumnSpec(features.oracle, "oracle", "floating or list<floating>"))
    return out


def check_schema(schema: pa.Schema, features: FeatureSchemaConfig, file: str, with_oracle: bool) -> None:
    """Raise DataError naming ``file`` and the column when a needed column is missing or has a wrong type."""
    for spec in column_specs(features, with_oracle):
        index = schema.get_field_index(spec.name)
        if index < 0:
            raise DataError(
                f"{file}: column {spec.name!r} ({spec.role}) is missing; the file has "
                f"{', '.join(schema.names[:40])}{' ...' if len(schema.names) > 40 else ''}"
            )
        tp = schema.field(index).type
        if not spec.accepts(tp):
            raise DataError(f"{file}: column {spec.name!r} ({spec.role}) has type {tp}; expected {spec.expected}")
