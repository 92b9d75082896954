"""The ``data`` section: feature schema, data sources (synthetic, Parquet, converters) and the reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Hashing = Literal["none", "modulo", "hash"]


@dataclass(kw_only=True)
class SparseFeatureConfig:
    """One id-list column (single- or multi-hot) looked up in one embedding table."""

    name: str
    """Column name in the Parquet data; also the feature key in the KeyedJaggedTensor."""
    table: str
    """Name of the embedding table (in ``embeddings.tables``) this feature reads."""
    hashing: Hashing = "none"
    """How raw ids map to rows: ``none`` (ids must be < rows; a bigger id is an error),
    ``modulo`` (id % rows) or ``hash`` (a stable 64-bit mix, then % rows)."""
    max_ids: int = 0
    """Keep at most this many ids per example for multi-hot columns (0 = keep all)."""


@dataclass(kw_only=True)
class SequenceFeatureConfig:
    """One user event sequence (per event type): item ids and timestamps, newest last."""

    name: str
    """Event type name (``click``, ``purchase``...); the key of this sequence in the batch."""
    ids: str
    """List<int64> column holding the item ids of the events."""
    table: str
    """Embedding table the item ids are looked up in (may be shared with a sparse feature)."""
    max_length: int = 100
    """Keep the ``max_length`` most recent events."""
    timestamps: str = ""
    """List<int64> column of event timestamps (seconds); empty when the data has none."""
    hashing: Hashing = "none"
    """Same meaning as for sparse features."""


@dataclass(kw_only=True)
class FeatureSchemaConfig:
    """What one example (one Parquet row) holds."""

    labels: list[str] = field(default_factory=lambda: ["label"])
    """Label columns, 0/1 each unless listed in ``value_labels``; several labels make a multi-task model
    (one head per label). Filled from ``model.tasks`` when that is set and this is left at its default."""
    value_labels: list[str] = field(default_factory=list)
    """Labels that hold real values (regression targets) instead of 0/1. Filled from ``model.tasks``
    (tasks with ``loss: regression``) when left empty."""
    dense: list[str] = field(default_factory=list)
    """Float columns, fed to the dense arch in this order."""
    sparse: list[SparseFeatureConfig] = field(default_factory=list)
    """Id-list features, pooled by their embedding table."""
    sequences: list[SequenceFeatureConfig] = field(default_factory=list)
    """Event sequences (unpooled), for sequence models."""
    domain: str = ""
    """Integer column with a domain id (surface, country...; cross-domain models and per-domain metrics);
    empty when there is none."""
    window: str = ""
    """Integer column with each row's Zipper attribution window (0 = shortest; written by
    ``recscale data zipper``); needed by tasks with ``windows > 1``."""
    num_windows: int = 0
    """Windows of the ``window`` column (its values must be below it); filled from ``model.tasks``."""
    domain_names: list[str] = field(default_factory=list)
    """Names of domain ids 0, 1, ... in metric keys (``auc/<task>/<name>``); empty = ``domain<id>``."""
    oracle: str = ""
    """Float column with the true click probability (synthetic data); used to report oracle AUC."""
    teacher: str = ""
    """Column with a teacher model's logits for the row, stored beside the data (a float for one task, a
    list<float> of one per task; null = the teacher had no prediction for the row, a cache miss); used as
    soft labels and input features (``model.teacher``)."""


@dataclass(kw_only=True)
class SyntheticConfig:
    """The planted-truth generator (``recscale data synth``); its columns follow ``data.features``."""

    num_train: int = 200_000
    """Training examples to generate."""
    num_valid: int = 50_000
    """Validation examples to generate (they carry the oracle probability)."""
    click_rate: float = 0.03
    """Target mean click probability."""
    zipf_exponent: float = 1.1
    """Exponent of the Zipf law the ids are drawn from (per feature)."""
    multi_hot_max: int = 1
    """Ids per sparse feature bag are drawn from 1..multi_hot_max (1 = single-hot). The first two sparse
    features (the user and item roles of the hierarchical term) always stay single-hot."""
    id_effect_scale: float = 0.5
    """Standard deviation of the per-id logit effects."""
    interaction_rank: int = 4
    """Rank of the planted pairwise field interactions."""
    interaction_scale: float = 0.5
    """Scale of the pairwise interaction term of the logit."""
    hierarchical_scale: float = 0.0
    """Scale of the user-cluster x item-category term (0 = off)."""
    num_clusters: int = 8
    """Clusters in the hierarchical term (on the first and second sparse features)."""
    sequence_scale: float = 0.0
    """Scale of the recency-weighted history/candidate match term (0 = off; needs sequences)."""
    dense_scale: float = 0.3
    """Scale of the linear effect of the dense features."""
    num_domains: int = 1
    """Number of domains written to ``data.features.domain`` (1 = single domain)."""
    domain_scale: float = 0.3
    """Scale of the domain term (domain bias + domain x item-category effect; needs ``num_domains > 1``)."""
    cross_domain_scale: float = 0.0
    """Scale of the cross-domain term: the candidate item's category x the user's domain-B history
    (mean of ``K[category(item), category(h)]`` over the events h of ``cross_domain_sequence``); 0 = off."""
    cross_domain_sequence: str = ""
    """The domain-B sequence of the cross-domain term (``""`` = the second of ``data.features.sequences``)."""
    recency_decay: float = 0.8
    """Sequence term: an event k steps older than the newest weighs ``recency_decay**k``."""
    task_correlation: float = 0.5
    """Multi-task labels: correlation of each extra task's per-id effects with the first task's."""
    task_interaction_scale: float = 0.0
    """Multi-task labels: scale of each task's own pairwise field interactions (drawn independently per
    task: signal the tasks do not share); 0 = off."""
    task_domain_scale: float = 0.0
    """Multi-task, multi-domain labels: scale of each task's own domain term (domain bias + domain x item
    category, drawn independently per task: the domains shift each task's truth differently); 0 = off."""
    domain_feature_shift: float = 0.0
    """Domains shift the feature distribution: in domain d > 0 this fraction of the item ids (the second
    sparse feature, single-hot) follows the domain's own popularity order; 0 = every domain alike."""
    domain_groups: list[list[int]] = field(default_factory=list)
    """Domains that form one market: a partition of ``range(num_domains)`` (e.g. ``[[0, 1], [2, 3]]``). The
    domains of a group share their users (the first sparse feature draws from the group's own slice of the
    table, disjoint from other groups') and their truth and item distribution (every domain term reads the
    group's first domain), so they differ only in traffic share: what a partitioner should put in one model.
    Empty = every domain on its own, sharing users with all (the data of configs without it)."""
    useless_features: list[str] = field(default_factory=list)
    """Names of sparse or dense features that are drawn as usual but enter no term of any task's logit (pure
    noise: what feature selection should drop). Not the first two sparse features (the user and item roles)."""
    task_features: dict[str, list[str]] = field(default_factory=dict)
    """Label name -> the only sparse features whose per-id effects enter that task's id term (the other
    features add nothing to it; the shared terms are unchanged); unlisted labels use every feature."""
    conversion_label: str = ""
    """A label of ``data.features.labels`` (not the first) that is a conversion observed only after a click
    on the first label: its true probability is p(conversion | click), its label is click x
    Bernoulli(p), and its oracle column holds p(conversion | click) (train it with ``given: <first>``)."""
    conversion_rate: float = 0.1
    """Target mean of p(conversion | click) (``conversion_label``)."""
    conversion_delay_mean_s: float = 0.0
    """Conversions happen an Exp(mean) delay after the impression, written to ``delay_column``; 0 = none."""
    conversion_delay_max_s: float = 0.0
    """Conversions later than this after their impression are never observed (label 0, no delay; the
    oracle is p x P(delay <= max)); 0 = no limit."""
    teacher_noise: float = 0.3
    """``data.features.teacher``: the stand-in teacher's logit is the true logit plus N(0, teacher_noise^2)."""
    teacher_hit_rate: float = 1.0
    """Share of rows the stand-in teacher scored (the others get a null: a cache miss)."""
    drift_per_day: float = 0.0
    """The truth drifts: a daily random walk whose step has this standard deviation in the logit (the
    dense features' and the user-cluster x item-category effects wander); 0 = stationary. Days count from
    row 0 of ``train/`` by ``seconds_per_row``; ``valid/`` continues the timeline after ``train/``."""
    drift_memory: float = 1.0
    """ρ in (0, 1] of the drift: each day the walk keeps ρ times its state and adds the step. 1 = a random
    walk from 0 on day 0, whose spread (and with it the base rates) grows with the days; < 1 = mean-reverting
    (AR(1)), started from its stationary law so its spread is ``drift_per_day / sqrt(1 - ρ²)`` on every day
    and the base rates hold on every day; days k apart correlate as ρ^k."""
    time_column: str = ""
    """Column for the impression time (int64 seconds: a fixed start + ``seconds_per_row`` x row index, the
    rows of ``valid/`` after those of ``train/``); empty = not written."""
    seconds_per_row: float = 10.0
    """Impression time between consecutive rows (``time_column``)."""
    partition_by_day: bool = False
    """Write each split as one subdirectory per day of the impression timeline (``day=00000/``, ...,
    by ``seconds_per_row``), the layout ``trainer.streaming`` trains on day by day. Rows and their values
    are the same as without it."""
    delay_column: str = ""
    """Column for the conversion delay in seconds (float, null without a conversion); needs
    ``conversion_delay_mean_s > 0``."""
    row_group_size: int = 16_384
    """Rows per Parquet row group."""
    rows_per_file: int = 1_048_576
    """Rows per Parquet file (rounded up to whole row groups); bigger splits get several files."""
    seed: int = 1234
    """Seed of the generator (the data is a pure function of the config and this seed)."""


@dataclass(kw_only=True)
class ReaderConfig:
    """How Parquet is streamed into batches."""

    shuffle: bool = True
    """Shuffle row-group order per epoch and rows within a buffer (deterministic from ``seed``)."""
    shuffle_buffer_rows: int = 65_536
    """Rows held in the in-memory shuffle buffer."""
    seed: int = 0
    """Seed of the shuffle."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = read in the training process)."""
    tail: Literal["drop", "pad"] = "drop"
    """What to do with the uneven last batch: drop it on every rank, or pad it with
    zero-weight examples so every rank runs the same number of steps."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad values (label not 0/1, NaN dense value, out-of-range id): raise, or skip and count."""


Remap = Literal["none", "modulo", "graphhash", "double_graphhash", "raw"]


@dataclass(kw_only=True)
class FieldRemapConfig:
    """How the converter maps one categorical field's values to table rows when not by ``categorical``."""

    remap: Remap = "none"
    """``none``: the ``categorical`` encoding. ``modulo``: the value's key mod the table's rows (the key is
    the integer itself in ``integer`` mode, else the 64-bit hash of the text: a random, stateless sharing).
    ``graphhash``: the row of the value's community in the user-item graph (``data.convert.graphhash``;
    the field must be its ``user`` or ``item``). ``double_graphhash``: the same, plus a hashed row of the
    value in a second table (``hash_feature``). ``raw``: the key itself with the top bit cleared
    (``key & (2**63 - 1)``, an int64 >= 0; no vocabulary, no modulo), for a ``collisions: managed`` table,
    whose features bring raw ids (and whose features the converter writes only this way)."""
    hash_feature: str = ""
    """``double_graphhash``: the sparse feature (in ``data.features.sparse``, on its own table) that gets the
    second row, SplitMix64(key) mod that table's rows; the converter fills it from this field's column, so
    the raw input needs no such column. Give its table the same rows as this field's to match the paper."""


@dataclass(kw_only=True)
class GraphHashConfig:
    """GraphHash: rows shared by communities of the training user-item graph (``remap: graphhash``).

    The graph has an edge between a user and an item for every positive training row (weights = how many
    such rows), and is split into communities by Louvain on Barber's bipartite modularity (scikit-network).
    A value reads its community's row; values without a positive training row (unseen, or only in
    negative rows) read a row of a hashed cold block after the communities.
    """

    user: str = ""
    """The user-side field (a sparse feature name; its raw column holds the user id)."""
    item: str = ""
    """The item-side field."""
    resolution: float = 5.0
    """Modularity resolution: larger gives more, smaller communities (the paper uses 5 for CTR data)."""
    seed: int = 0
    """Seed of Louvain's node order (our choice: nodes are shuffled, so seeds give different partitions)."""
    binarize: bool = False
    """Every user-item pair with a positive row weighs 1, however many positive rows it has."""
    label: str = ""
    """The label whose value 1 makes a row positive ("" = the first of ``data.features.labels``)."""
    cold_fraction: float = 0.01
    """Cold block rows = max(``min_cold_rows``, ceil(``cold_fraction`` x the field's community rows))."""
    min_cold_rows: int = 8
    """Smallest cold block."""


@dataclass(kw_only=True)
class ConvertConfig:
    """How raw files become Parquet (``recscale data convert``); output columns follow ``data.features``."""

    categorical: Literal["hash", "vocab", "integer"] = "hash"
    """Raw categorical value -> table row. ``hash``: row 0 = missing, else 1 + hash % (rows - 1).
    ``vocab``: a frequency-thresholded vocabulary of the training input (row 0 = missing, 1 = out of
    vocabulary, then by descending count, at most the table's rows). ``integer``: the value already
    is a row (it must be < the table's rows)."""
    min_count: int = 1
    """``vocab``: values seen fewer times than this in the training input share the OOV row."""
    dense_transform: Literal["log1p", "none"] = "none"
    """Dense columns: ``log1p`` = log(1 + max(x, 0)) (negatives clamped to 0; Criteo integers), or as is."""
    dense_missing: float = 0.0
    """Value written for an empty dense field (counted per column in the stats)."""
    sequence_separator: str = "^"
    """CSV: separator of the ids inside a sequence cell (``1^5^9``)."""
    valid_fraction: float = 0.0
    """Send this fraction of the input rows to ``valid/`` (a seeded per-row split, streamed);
    0 = validation rows come only from separate inputs (``--valid``)."""
    split_seed: int = 0
    """Seed of the train/valid split."""
    row_group_size: int = 65_536
    """Rows per Parquet row group of the output."""
    rows_per_file: int = 4_194_304
    """Rows per output Parquet file (rounded up to whole row groups)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed line or bad value: raise naming file, line and column, or skip it and count it."""
    fields: dict[str, FieldRemapConfig] = field(default_factory=dict)
    """Sparse feature name -> a row mapping other than ``categorical`` (``modulo``, ``graphhash``,
    ``double_graphhash``) or raw ids (``raw``, for ``collisions: managed`` tables); unlisted features use
    ``categorical``."""
    graphhash: GraphHashConfig = field(default_factory=GraphHashConfig)
    """The user-item graph and its clustering (fields with ``remap: graphhash`` / ``double_graphhash``)."""


@dataclass(kw_only=True)
class ZipperConfig:
    """How ``recscale data zipper`` builds a delayed-label dataset at time NOW (Lattice's Zipper).

    Each impression is assigned by a hash of its signature to one of the attribution windows; it is emitted
    only once its window has closed (impression time + window <= NOW), with the label observed within it.
    """

    label: str = ""
    """The delayed label column (1 = converted eventually)."""
    time_column: str = ""
    """Impression time column (integer seconds)."""
    delay_column: str = ""
    """Conversion delay column (seconds after the impression; null without a conversion)."""
    windows_s: list[float] = field(default_factory=lambda: [86_400.0, 259_200.0, 604_800.0])
    """Attribution windows in seconds, shortest first (default 1, 3 and 7 days)."""
    probabilities: list[float] = field(default_factory=list)
    """Share of impressions assigned to each window (empty = uniform)."""
    now_s: int = 0
    """NOW, in the time column's seconds (0 = one second after the training input's last impression)."""
    key_columns: list[str] = field(default_factory=list)
    """Integer columns whose values sign an impression (empty = the time column and the first two sparse
    features)."""
    salt: int = 0
    """Salt of the window hash (another salt, another assignment)."""
    valid_window_s: float = 0.0
    """The window that labels ``valid/`` (0 = the longest of ``windows_s``); give every variant compared on
    the same validation rows the same value (e.g. 7 days for a 1-day-only baseline)."""
    window_column: str = "zipper_window"
    """Column written with each row's window (``data.features.window`` of the job that trains on it)."""
    order: Literal["impression", "arrival"] = "impression"
    """Row order of ``train/``. ``impression``: the input's order (one file per input file). ``arrival``: the
    order a production stream delivers the rows, by the time each label becomes known (impression time +
    its window), as one ``day=YYYY-MM-DD/`` folder per 24 hours counted back from NOW (named by the UTC date
    each starts on); read in time order (one rank with ``data.reader.shuffle: false``, or
    ``trainer.streaming``) the model trains on a day's 1-day labels beside the 7-day labels of the week
    before, as it would in production."""


@dataclass(kw_only=True)
class DataConfig:
    """Where the examples come from and what they contain."""

    source: Literal["synthetic", "parquet"] = "synthetic"
    """``synthetic``: generate planted-truth Parquet once (cached), then read it.
    ``parquet``: read ``train_path`` / ``valid_path``."""
    train_path: str = ""
    """Parquet file or directory for training (``parquet`` source)."""
    valid_path: str = ""
    """Parquet file or directory for validation (``parquet`` source)."""
    test_path: str = ""
    """Parquet file or directory held out for a final evaluation (``parquet`` source, optional):
    ``recscale eval RUN --split test`` reads it; training, evaluation during training, early stopping
    and best-checkpoint selection never do, so choices made on valid do not leak into it."""
    cache_dir: str = "~/.cache/recscale/data"
    """Where generated synthetic data is kept, keyed by a hash of its config."""
    features: FeatureSchemaConfig = field(default_factory=FeatureSchemaConfig)
    """The feature schema."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings (``synthetic`` source)."""
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    """Reader settings."""
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    """Converter settings (``recscale data convert``)."""
    zipper: ZipperConfig = field(default_factory=ZipperConfig)
    """Delayed-label dataset builder settings (``recscale data zipper``)."""
