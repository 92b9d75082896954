"""Value checks across the whole job config, run before any process starts.

The loader checks types; this module checks that the values can run together: tables exist and
are non-empty, features point at real tables, batch sizes divide, the expert-parallel group fits
the world. Every message starts with the key path and says what was expected.
"""

from __future__ import annotations

from recscale.configs.loader import ConfigError
from recscale.configs.managed import managed_problems
from recscale.configs.perturbation import perturbation_problems
from recscale.configs.remap import remap_problems
from recscale.configs.schema import DataConfig, JobConfig
from recscale.configs.tasks import synthetic_task_problems, task_problems
from recscale.configs.validate_training import training_problems

CPU_SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")


def validate(cfg: JobConfig, world_size: int | None = None, device: str | None = None) -> None:
    """Raise ConfigError listing every problem, each with its key path.

    Model-specific checks live with the model (``ModelSpec.check``); ``recscale.trainer.job.check_job``
    runs both.

    Args:
        cfg: the job.
        world_size: total ranks the job will run on; world-size checks are skipped when None.
        device: ``cpu`` or ``cuda`` when known (device-specific checks).
    """
    problems = collect_problems(cfg, world_size, device)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def collect_problems(cfg: JobConfig, world_size: int | None = None, device: str | None = None) -> list[str]:
    """All problems of ``cfg`` as ``key.path: what is wrong (expected ...)`` lines."""
    out: list[str] = []
    out += _check_tables(cfg)
    out += managed_problems(cfg)
    out += _check_features(cfg)
    out += task_problems(cfg)
    out += synthetic_task_problems(cfg)
    out += _check_data(cfg)
    out += _check_model(cfg)
    out += perturbation_problems(cfg)
    out += training_problems(cfg)
    out += _check_sharding(cfg, world_size)
    if device == "cpu" and cfg.optimizer.sparse.name not in CPU_SPARSE_OPTIMIZERS and not all_data_parallel(cfg):
        out.append(
            f"optimizer.sparse.name: {cfg.optimizer.sparse.name!r} has no CPU kernel in FBGEMM; "
            f"expected one of {', '.join(CPU_SPARSE_OPTIMIZERS)} (or make every table data_parallel: "
            "sharding.constraints: {'*': {sharding_types: [data_parallel]}})"
        )
    if world_size is not None:
        if world_size < 1:
            out.append(f"world size: expected at least 1 rank, got {world_size}")
        elif cfg.trainer.batch_size % world_size:
            out.append(
                f"trainer.batch_size: {cfg.trainer.batch_size} is not divisible by the world size "
                f"{world_size} (expected a multiple of {world_size})"
            )
    return out


def all_data_parallel(cfg: JobConfig) -> bool:
    """Every table is constrained to data-parallel sharding (its optimizer is then a plain torch one)."""
    s = cfg.sharding
    for t in cfg.embeddings.tables:
        if s.manual:
            if s.manual[t.name].type != "data_parallel" if t.name in s.manual else True:
                return False
            continue
        c = s.constraints.get(t.name) or s.constraints.get("*")
        if c is None or c.sharding_types != ["data_parallel"]:
            return False
    return True


def _check_tables(cfg: JobConfig) -> list[str]:
    out = []
    if cfg.embeddings.dim <= 0:
        out.append(f"embeddings.dim: expected a positive integer, got {cfg.embeddings.dim}")
    if not cfg.embeddings.tables:
        out.append("embeddings.tables: expected at least one table")
    seen: set[str] = set()
    for i, t in enumerate(cfg.embeddings.tables):
        where = f"embeddings.tables[{i}] ({t.name})"
        if not t.name:
            out.append(f"embeddings.tables[{i}].name: expected a non-empty name")
        if t.name in seen:
            out.append(f"{where}.name: duplicate table name {t.name!r}")
        seen.add(t.name)
        if t.num_embeddings <= 0:
            out.append(f"{where}.num_embeddings: expected at least 1 row, got {t.num_embeddings}")
        if t.dim is not None and t.dim <= 0:
            out.append(f"{where}.dim: expected a positive integer, got {t.dim}")
    return out


def _check_features(cfg: JobConfig) -> list[str]:
    out = []
    f = cfg.data.features
    tables = {t.name for t in cfg.embeddings.tables}
    used: set[str] = set()
    if not f.labels:
        out.append("data.features.labels: expected at least one label column")
    names: dict[str, str] = {}

    def claim(column: str, where: str) -> None:
        if column in names:
            out.append(f"{where}: column {column!r} is already used by {names[column]}")
        names[column] = where

    for i, name in enumerate(f.labels):
        claim(name, f"data.features.labels[{i}]")
    for i, name in enumerate(f.dense):
        claim(name, f"data.features.dense[{i}]")
    if not f.sparse and not f.sequences:
        out.append("data.features.sparse: expected at least one sparse or sequence feature")
    for i, s in enumerate(f.sparse):
        where = f"data.features.sparse[{i}] ({s.name})"
        claim(s.name, where)
        if s.table not in tables:
            out.append(f"{where}.table: no table named {s.table!r}; tables: {', '.join(sorted(tables))}")
        used.add(s.table)
        if s.max_ids < 0:
            out.append(f"{where}.max_ids: expected >= 0, got {s.max_ids}")
    for i, q in enumerate(f.sequences):
        where = f"data.features.sequences[{i}] ({q.name})"
        claim(q.ids, f"{where}.ids")
        if q.timestamps:
            claim(q.timestamps, f"{where}.timestamps")
        if q.table not in tables:
            out.append(f"{where}.table: no table named {q.table!r}; tables: {', '.join(sorted(tables))}")
        used.add(q.table)
        if q.max_length <= 0:
            out.append(f"{where}.max_length: expected a positive integer, got {q.max_length}")
    for t in cfg.embeddings.tables:
        if t.name not in used:
            out.append(f"embeddings.tables ({t.name}): no feature reads this table")
    return out


def _check_data(cfg: JobConfig) -> list[str]:
    out = []
    d = cfg.data
    if d.source == "parquet":
        if not d.train_path:
            out.append("data.train_path: expected a Parquet file or directory (data.source is 'parquet')")
        if not d.valid_path:
            out.append("data.valid_path: expected a Parquet file or directory (data.source is 'parquet')")
    elif d.test_path:
        out.append(f"data.test_path: a test split is read only with data.source: parquet (got {d.source!r})")
    s = d.synthetic
    if d.source == "synthetic":
        if s.num_train <= 0:
            out.append(f"data.synthetic.num_train: expected a positive integer, got {s.num_train}")
        if s.num_valid <= 0:
            out.append(f"data.synthetic.num_valid: expected a positive integer, got {s.num_valid}")
        if not 0.0 < s.click_rate < 1.0:
            out.append(f"data.synthetic.click_rate: expected a probability in (0, 1), got {s.click_rate}")
        if s.multi_hot_max < 1:
            out.append(f"data.synthetic.multi_hot_max: expected >= 1, got {s.multi_hot_max}")
        if s.row_group_size <= 0:
            out.append(f"data.synthetic.row_group_size: expected a positive integer, got {s.row_group_size}")
        if s.rows_per_file <= 0:
            out.append(f"data.synthetic.rows_per_file: expected a positive integer, got {s.rows_per_file}")
        if s.zipf_exponent <= 0:
            out.append(f"data.synthetic.zipf_exponent: expected a positive number, got {s.zipf_exponent}")
        if s.interaction_rank < 1:
            out.append(f"data.synthetic.interaction_rank: expected >= 1, got {s.interaction_rank}")
        if s.num_clusters < 1:
            out.append(f"data.synthetic.num_clusters: expected >= 1, got {s.num_clusters}")
        if s.num_domains < 1:
            out.append(f"data.synthetic.num_domains: expected >= 1, got {s.num_domains}")
        if not 0.0 < s.recency_decay <= 1.0:
            out.append(f"data.synthetic.recency_decay: expected a value in (0, 1], got {s.recency_decay}")
        if not -1.0 <= s.task_correlation <= 1.0:
            out.append(f"data.synthetic.task_correlation: expected a value in [-1, 1], got {s.task_correlation}")
        scales = ("id_effect_scale", "interaction_scale", "hierarchical_scale", "sequence_scale", "dense_scale")
        for key in (*scales, "domain_scale", "cross_domain_scale"):
            if getattr(s, key) < 0:
                out.append(f"data.synthetic.{key}: expected >= 0, got {getattr(s, key)}")
        if s.sequence_scale > 0 and not d.features.sequences:
            out.append("data.synthetic.sequence_scale: the sequence term needs data.features.sequences")
        out.extend(_check_cross_domain(d))
        out.extend(_check_planted_features(d))
    c = d.convert
    if c.min_count < 1:
        out.append(f"data.convert.min_count: expected >= 1, got {c.min_count}")
    if not 0.0 <= c.valid_fraction < 1.0:
        out.append(f"data.convert.valid_fraction: expected a fraction in [0, 1), got {c.valid_fraction}")
    if c.row_group_size <= 0 or c.rows_per_file <= 0:
        out.append("data.convert: row_group_size and rows_per_file must be positive")
    if not c.sequence_separator:
        out.append("data.convert.sequence_separator: expected a non-empty separator")
    out.extend(remap_problems(d, cfg.embeddings))
    r = d.reader
    if r.shuffle_buffer_rows <= 0:
        out.append(f"data.reader.shuffle_buffer_rows: expected a positive integer, got {r.shuffle_buffer_rows}")
    if r.num_workers < 0:
        out.append(f"data.reader.num_workers: expected >= 0, got {r.num_workers}")
    return out


def _check_cross_domain(d: DataConfig) -> list[str]:
    """The cross-domain term needs a candidate item (sparse field 1) and the domain-B sequence it names."""
    s = d.synthetic
    if s.cross_domain_scale <= 0:
        return []
    names = [q.name for q in d.features.sequences]
    out = []
    if len(d.features.sparse) < 2:
        out.append("data.synthetic.cross_domain_scale: the cross-domain term needs an item (data.features.sparse[1])")
    if s.cross_domain_sequence and s.cross_domain_sequence not in names:
        out.append(
            f"data.synthetic.cross_domain_sequence: no sequence named {s.cross_domain_sequence!r}; sequences: {names}"
        )
    elif not s.cross_domain_sequence and len(names) < 2:
        out.append(
            "data.synthetic.cross_domain_scale: the cross-domain term needs two data.features.sequences "
            f"(domain A, domain B) or data.synthetic.cross_domain_sequence, got {names}"
        )
    return out


def _check_planted_features(d: DataConfig) -> list[str]:
    """``useless_features`` name sparse or dense features (not the user / item); ``task_features`` labels and fields."""
    s, f = d.synthetic, d.features
    sparse = [x.name for x in f.sparse]
    out = []
    for i, name in enumerate(s.useless_features):
        where = f"data.synthetic.useless_features[{i}]"
        if name not in sparse and name not in f.dense:
            out.append(f"{where}: no feature named {name!r}; sparse: {sparse}, dense: {f.dense}")
        elif name in sparse[:2]:
            out.append(f"{where}: {name!r} is one of the first two sparse features (the planted user and item)")
        elif s.useless_features.index(name) < i:
            out.append(f"{where}: {name!r} is listed twice")
        elif (
            s.sequence_scale > 0
            and name in sparse
            and any(q.table == f.sparse[sparse.index(name)].table for q in f.sequences)
        ):
            out.append(f"{where}: {name!r} shares its table with a sequence (a candidate of the sequence term)")
    for label, names in s.task_features.items():
        where = f"data.synthetic.task_features.{label}"
        if label not in f.labels:
            out.append(f"{where}: no label named {label!r}; labels: {f.labels}")
        for i, name in enumerate(names):
            if name not in sparse:
                out.append(f"{where}[{i}]: no sparse feature named {name!r}; sparse: {sparse}")
            elif name in s.useless_features:
                out.append(f"{where}[{i}]: {name!r} is also in data.synthetic.useless_features")
    return out


def _check_model(cfg: JobConfig) -> list[str]:
    out = []
    m = cfg.model
    for key in ("dense_arch", "over_arch"):
        widths: list[int] = getattr(m, key)
        for i, w in enumerate(widths):
            if w <= 0:
                out.append(f"model.{key}[{i}]: expected a positive width, got {w}")
    if not 0.0 <= m.dropout < 1.0:
        out.append(f"model.dropout: expected a value in [0, 1), got {m.dropout}")
    if m.dcnv2.num_cross_layers < 0:
        out.append(f"model.dcnv2.num_cross_layers: expected >= 0, got {m.dcnv2.num_cross_layers}")
    if m.dcnv2.low_rank < 0:
        out.append(f"model.dcnv2.low_rank: expected >= 0 (0 = full rank), got {m.dcnv2.low_rank}")
    return out


def _check_sharding(cfg: JobConfig, world_size: int | None) -> list[str]:
    out = []
    s = cfg.sharding
    tables = {t.name for t in cfg.embeddings.tables}
    if s.ep_size < 1:
        out.append(f"sharding.ep_size: expected at least 1, got {s.ep_size}")
    elif world_size is not None and world_size % s.ep_size:
        out.append(
            f"sharding.ep_size: {s.ep_size} does not divide the world size {world_size} "
            f"(expected a divisor of {world_size})"
        )
    if s.ep_size > 1 and s.dense != "deepspeed":
        out.append(f"sharding.ep_size: expert parallelism ({s.ep_size}) needs sharding.dense: deepspeed")
    if s.zero_stage and s.dense != "deepspeed":
        out.append(f"sharding.zero_stage: ZeRO ({s.zero_stage}) needs sharding.dense: deepspeed")
    if not 0.0 <= s.storage_reservation < 1.0:
        out.append(f"sharding.storage_reservation: expected a fraction in [0, 1), got {s.storage_reservation}")
    for name in s.constraints:
        if name != "*" and name not in tables:
            out.append(f"sharding.constraints.{name}: no table named {name!r}")
    if s.manual:
        for name in s.manual:
            if name not in tables:
                out.append(f"sharding.manual.{name}: no table named {name!r}")
        for name in sorted(tables - set(s.manual)):
            out.append(f"sharding.manual: table {name!r} is missing (a manual plan must list every table)")
        if world_size is not None:
            for name, m in s.manual.items():
                bad = [r for r in m.ranks if not 0 <= r < world_size]
                if bad:
                    out.append(f"sharding.manual.{name}.ranks: {bad} outside 0..{world_size - 1}")
                if m.type == "table_wise" and len(m.ranks) > 1:
                    out.append(f"sharding.manual.{name}.ranks: table_wise takes one rank, got {m.ranks}")
    topo = s.topology
    if topo.hbm_gb <= 0 or topo.ddr_gb <= 0:
        out.append("sharding.topology: hbm_gb and ddr_gb must be positive")
    if topo.ranks_per_node < 0:
        out.append(f"sharding.topology.ranks_per_node: expected >= 0, got {topo.ranks_per_node}")
    if s.plan_timeout_s <= 0:
        out.append(f"sharding.plan_timeout_s: expected a positive number of seconds, got {s.plan_timeout_s}")
    return out
