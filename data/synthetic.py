"""The synthetic generator: Parquet ``train/`` and ``valid/`` drawn from the planted model, plus its claims.

Rows are drawn in chunks of ``row_group_size`` (one Parquet row group each, so memory is bounded for
any size) from generators seeded by ``(seed, split, chunk)``: the data is a pure function of the
config. Every row carries its true click probability in ``features.oracle`` (when set), and
``claims.json`` records what the data is: the empirical click rate per split, the oracle AUC and
logloss on ``valid/`` (what a perfect model would score), and a summary of the planted model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recscale.configs.loader import config_to_dict
from recscale.configs.schema import DataConfig, EmbeddingsConfig, SyntheticConfig
from recscale.data.files import atomic_dir, write_json
from recscale.data.partition import seed_words
from recscale.data.planted import Inputs, PlantedModel
from recscale.data.planted_tasks import SECONDS_PER_DAY
from recscale.data.ragged import Ragged

GENERATOR_VERSION = 1
"""Bumped whenever the same config would give different data (it is part of the cache key)."""
CLAIMS = "claims.json"
START_TIME = 1_700_000_000
"""Impression time of row 0 (``time_column``), seconds since the epoch."""
SPLITS = (("train", 0), ("valid", 1))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for 0/1 ``labels`` (Mann-Whitney U; tied scores get their average rank)."""
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    counts = np.diff(np.r_[starts, len(scores)])
    average_rank = starts + (counts + 1) / 2.0  # 1-based ranks, averaged over each tie group
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(average_rank, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of ``probabilities`` (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _list_array(x: Ragged) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(x.offsets.astype(np.int32)), pa.array(x.values, type=pa.int64()))


def chunk_table(
    data: DataConfig, inputs: Inputs, labels: np.ndarray, probs: np.ndarray, extra: dict[str, pa.Array] | None = None
) -> pa.Table:
    """One chunk as an Arrow table with the columns ``data.features`` names (plus ``extra`` ones)."""
    f = data.features
    columns: dict[str, pa.Array] = dict(extra or {})
    for t, name in enumerate(f.labels):
        columns[name] = pa.array(labels[:, t].astype(np.int8))
    for j, name in enumerate(f.dense):
        columns[name] = pa.array(inputs.dense[:, j])
    for s, x in zip(f.sparse, inputs.sparse):
        columns[s.name] = _list_array(x) if isinstance(x, Ragged) else pa.array(x, type=pa.int64())
    for q, ids, times in zip(f.sequences, inputs.sequences, inputs.timestamps):
        columns[q.ids] = _list_array(ids)
        if q.timestamps:
            columns[q.timestamps] = _list_array(times)
    if f.domain:
        columns[f.domain] = pa.array(inputs.domain if inputs.domain is not None else np.zeros(len(labels), np.int64))
    if f.oracle:
        p32 = probs.astype(np.float32)
        if p32.shape[1] == 1:
            columns[f.oracle] = pa.array(p32[:, 0])
        else:
            flat = pa.array(p32.reshape(-1))
            columns[f.oracle] = pa.FixedSizeListArray.from_arrays(flat, p32.shape[1]).cast(pa.list_(pa.float32()))
    return pa.table(columns)


def _write_split(
    model: PlantedModel, data: DataConfig, split: str, split_id: int, num_rows: int, out: Path
) -> dict[str, object]:
    """Write one split as ``out/part-*.parquet``; returns its label sums and (valid) probabilities."""
    s = data.synthetic
    out.mkdir(parents=True, exist_ok=True)
    groups_per_file = max(1, -(-s.rows_per_file // s.row_group_size))
    label_sums = np.zeros(model.num_tasks)
    prob_sums = np.zeros(model.num_tasks)
    kept_labels, kept_probs, kept_domains = [], [], []
    writer: pq.ParquetWriter | None = None
    days = DayWriter(out, groups_per_file)
    for chunk, first in enumerate(range(0, num_rows, s.row_group_size)):
        n = min(s.row_group_size, num_rows - first)
        rng = np.random.default_rng(seed_words(s.seed, split_id, chunk))
        inputs = model.draw(n, rng, first)
        timeline = (first + (s.num_train if split == "valid" else 0) + np.arange(n)) * s.seconds_per_row
        inputs.day = (timeline // SECONDS_PER_DAY).astype(np.int64)
        probs = model.probabilities(inputs)
        labels = (rng.random(probs.shape) < probs).astype(np.int8)
        if model.conversion >= 0:  # a conversion is observed only after a click
            labels[:, model.conversion] *= labels[:, 0]
        delay = _conversion_delays(s, model, rng, labels, probs)
        label_sums += labels.sum(axis=0)
        prob_sums += probs.sum(axis=0)
        if split == "valid":
            kept_labels.append(labels)
            kept_probs.append(probs)
            kept_domains.append(inputs.domain if inputs.domain is not None else np.zeros(n, dtype=np.int64))
        extra = {**_time_columns(s, timeline, delay), **_teacher_column(data, rng, probs)}
        table = chunk_table(data, inputs, labels, probs, extra)
        if s.partition_by_day:
            days.write(table, inputs.day)
            continue
        if chunk % groups_per_file == 0:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(out / f"part-{chunk // groups_per_file:05d}.parquet", table.schema)
        assert writer is not None
        writer.write_table(table, row_group_size=n)
    if writer is not None:
        writer.close()
    days.close()
    result: dict[str, object] = {
        "rows": num_rows,
        "click_rate": (label_sums / max(num_rows, 1)).tolist(),
        "mean_true_probability": (prob_sums / max(num_rows, 1)).tolist(),
    }
    if kept_labels:
        result["labels"] = np.concatenate(kept_labels)
        result["probs"] = np.concatenate(kept_probs)
        result["domains"] = np.concatenate(kept_domains)
    return result


class DayWriter:
    """Writes time-ordered chunks as ``out/day=DDDDD/part-*.parquet``: one subdirectory per day.

    A chunk that spans a day boundary is cut there; each piece is a row group of its day's current file,
    and a day's file holds at most ``groups_per_file`` row groups.
    """

    def __init__(self, out: Path, groups_per_file: int) -> None:
        self.out = out
        self.groups_per_file = groups_per_file
        self.day = -1
        self.groups = 0
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table, day: np.ndarray) -> None:
        """Append ``table`` (rows in time order; ``day [n]`` non-decreasing), cut at day boundaries."""
        cuts = np.flatnonzero(np.diff(day)) + 1
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(day)]):
            self._append(table.slice(int(start), int(stop - start)), int(day[start]))

    def _append(self, piece: pa.Table, day: int) -> None:
        if day != self.day:
            self.close()
            self.day, self.groups = day, 0
        if self.groups % self.groups_per_file == 0:
            self.close()
            folder = self.out / f"day={day:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{self.groups // self.groups_per_file:05d}.parquet"
            self.writer = pq.ParquetWriter(folder / name, piece.schema)
        assert self.writer is not None
        self.writer.write_table(piece, row_group_size=max(piece.num_rows, 1))
        self.groups += 1

    def close(self) -> None:
        """Close the current file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _conversion_delays(
    s: SyntheticConfig, model: PlantedModel, rng: np.random.Generator, labels: np.ndarray, probs: np.ndarray
) -> np.ndarray | None:
    """Each row's conversion delay (NaN without a conversion), or None without delays.

    Drawn after the labels (which stay as they were drawn); conversions later than
    ``conversion_delay_max_s`` are never observed: their label becomes 0, and the oracle of the conversion
    task becomes p x P(delay <= max) (``probs`` is changed in place).
    """
    if model.conversion < 0 or s.conversion_delay_mean_s <= 0:
        return None
    delay = rng.exponential(s.conversion_delay_mean_s, labels.shape[0])
    c = model.conversion
    if s.conversion_delay_max_s > 0:
        labels[delay > s.conversion_delay_max_s, c] = 0
        probs[:, c] *= -np.expm1(-s.conversion_delay_max_s / s.conversion_delay_mean_s)
    return np.where(labels[:, c] == 1, delay, np.nan)


def _teacher_column(data: DataConfig, rng: np.random.Generator, probs: np.ndarray) -> dict[str, pa.Array]:
    """A stand-in teacher (``data.features.teacher``): the true logit + noise, null on missed rows.

    Drawn after everything else of the chunk, so the other columns stay as they were.
    """
    name, s = data.features.teacher, data.synthetic
    if not name:
        return {}
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logits = (np.log(p / (1 - p)) + s.teacher_noise * rng.standard_normal(p.shape)).astype(np.float32)
    missed = rng.random(len(p)) >= s.teacher_hit_rate
    if logits.shape[1] == 1:
        return {name: pa.array(logits[:, 0], mask=missed)}
    offsets = pa.array(np.arange(len(p) + 1, dtype=np.int32) * logits.shape[1])
    return {name: pa.ListArray.from_arrays(offsets, pa.array(logits.reshape(-1)), mask=pa.array(missed))}


def _time_columns(s: SyntheticConfig, timeline: np.ndarray, delay: np.ndarray | None) -> dict[str, pa.Array]:
    """The impression time and conversion delay columns, when the config names them."""
    out: dict[str, pa.Array] = {}
    if s.time_column:
        out[s.time_column] = pa.array(START_TIME + np.floor(timeline).astype(np.int64))
    if s.delay_column and delay is not None:
        out[s.delay_column] = pa.array(delay, mask=np.isnan(delay))
    return out


def _task_rows(model: PlantedModel, labels: np.ndarray, t: int) -> np.ndarray:
    """Rows where task t's label is observed: the clicked rows for a conversion, else every row."""
    return labels[:, 0] == 1 if t == model.conversion else np.ones(len(labels), dtype=bool)


def _oracle_by_task_and_domain(
    data: DataConfig, model: PlantedModel, labels: np.ndarray, probs: np.ndarray, domains: np.ndarray
) -> dict[str, object]:
    """Oracle AUC per task (a conversion on clicked rows only) and per domain, for multi-task or -domain data."""
    names = data.features.labels
    if len(names) == 1 and not data.features.domain:
        return {}
    out: dict[str, dict[str, float]] = {}
    for t, name in enumerate(names):
        rows = _task_rows(model, labels, t)
        out[name] = {"all": auc(labels[rows, t], probs[rows, t])}
        if data.features.domain:
            for d in range(data.synthetic.num_domains):
                where = rows & (domains == d)
                out[name][f"domain{d}"] = auc(labels[where, t], probs[where, t])
    return {"oracle_auc_valid_by_task": out}


def generate_synthetic(data: DataConfig, embeddings: EmbeddingsConfig, out_dir: str | Path) -> dict[str, object]:
    """Generate ``out_dir/{train,valid}/part-*.parquet`` and ``out_dir/claims.json``; returns the claims.

    The directory appears atomically (written under a temporary name, then renamed); it must not exist yet.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty")
    started = time.perf_counter()
    model = PlantedModel(data.features, embeddings, data.synthetic)
    with atomic_dir(out_dir) as tmp:
        splits = {}
        for split, split_id in SPLITS:
            rows = data.synthetic.num_train if split == "train" else data.synthetic.num_valid
            splits[split] = _write_split(model, data, split, split_id, rows, tmp / split)
        valid = splits["valid"]
        labels, probs, domains = valid.pop("labels"), valid.pop("probs"), valid.pop("domains")
        names = data.features.labels
        rows = [_task_rows(model, labels, t) for t in range(len(names))]
        claims: dict[str, object] = {
            "generator_version": GENERATOR_VERSION,
            "rows": {split: splits[split]["rows"] for split, _ in SPLITS},
            "click_rate_target": data.synthetic.click_rate,
            "click_rate": {split: dict(zip(names, splits[split]["click_rate"])) for split, _ in SPLITS},
            "mean_true_probability": {
                split: dict(zip(names, splits[split]["mean_true_probability"])) for split, _ in SPLITS
            },
            "oracle_auc_valid": {n: auc(labels[rows[t], t], probs[rows[t], t]) for t, n in enumerate(names)},
            "oracle_logloss_valid": {n: logloss(labels[rows[t], t], probs[rows[t], t]) for t, n in enumerate(names)},
            **_oracle_by_task_and_domain(data, model, labels, probs, domains),
            "oracle_column": data.features.oracle,
            "planted": model.summary(),
            "synthetic": config_to_dict(data.synthetic),
            "seconds": round(time.perf_counter() - started, 3),
        }
        write_json(tmp / CLAIMS, claims)
    return claims
