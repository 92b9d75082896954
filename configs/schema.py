"""The typed schema of a recscale job: one dataclass tree, loaded from YAML presets.

Every section is a ``kw_only`` dataclass whose fields carry their defaults and a docstring-style
comment. Types are checked when YAML is loaded (:mod:`recscale.configs.loader`) and values are
checked by :func:`recscale.configs.validate.validate` with the key path in every message, before
any process starts. Components receive only their own section (``cfg.sharding``, ``cfg.trainer``),
never the whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------------------------------
# data: feature schema, sources, reader
# --------------------------------------------------------------------------------------------------

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
    """Label columns, 0/1 each; several labels make a multi-task model (one head per label)."""
    dense: list[str] = field(default_factory=list)
    """Float columns, fed to the dense arch in this order."""
    sparse: list[SparseFeatureConfig] = field(default_factory=list)
    """Id-list features, pooled by their embedding table."""
    sequences: list[SequenceFeatureConfig] = field(default_factory=list)
    """Event sequences (unpooled), for sequence models."""
    domain: str = ""
    """Integer column with a domain id (cross-domain models); empty when there is none."""
    oracle: str = ""
    """Float column with the true click probability (synthetic data); used to report oracle AUC."""


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
    """Ids per sparse feature bag are drawn from 1..multi_hot_max (1 = single-hot)."""
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
    row_group_size: int = 16_384
    """Rows per Parquet row group."""
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
    cache_dir: str = "~/.cache/recscale/data"
    """Where generated synthetic data is kept, keyed by a hash of its config."""
    features: FeatureSchemaConfig = field(default_factory=FeatureSchemaConfig)
    """The feature schema."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings (``synthetic`` source)."""
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    """Reader settings."""


# --------------------------------------------------------------------------------------------------
# embeddings and model
# --------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TableConfig:
    """One embedding table."""

    name: str
    """Table name (the planner and the printed plan use it)."""
    num_embeddings: int
    """Rows."""
    dim: int | None = None
    """Columns; ``None`` takes ``embeddings.dim``."""
    pooling: Literal["sum", "mean"] = "sum"
    """How a multi-hot bag is reduced."""


@dataclass(kw_only=True)
class EmbeddingsConfig:
    """The embedding tables, which TorchRec shards."""

    dim: int = 16
    """Default embedding dimension."""
    tables: list[TableConfig] = field(default_factory=list)
    """All tables; features name the table they read."""


Activation = Literal["relu", "gelu", "silu"]


@dataclass(kw_only=True)
class DLRMConfig:
    """DLRM: bottom MLP on dense features, pairwise dot interaction, top MLP."""

    interaction_self: bool = False
    """Include the self dot products (the diagonal) in the interaction output."""


@dataclass(kw_only=True)
class DCNv2Config:
    """DCN-V2: cross network with low-rank (mixture-free) cross layers, plus a deep MLP."""

    num_cross_layers: int = 3
    """Cross layers."""
    low_rank: int = 64
    """Rank r of W = U Vᵀ in each cross layer; 0 = full-rank W."""
    structure: Literal["stacked", "parallel"] = "stacked"
    """``stacked``: cross network then deep MLP; ``parallel``: both on the input, concatenated."""


@dataclass(kw_only=True)
class ModelConfig:
    """The model: an architecture name from the registry plus its knobs."""

    arch: str = "dcnv2"
    """Registry name (``recscale.modules.registry.MODEL_SPECS``): ``dlrm``, ``dcnv2``..."""
    dense_arch: list[int] = field(default_factory=lambda: [64, 16])
    """Bottom MLP over the dense features (DLRM: its last width must equal the embedding dim).
    Empty = feed the raw dense features (DCNv2 only)."""
    over_arch: list[int] = field(default_factory=lambda: [256, 128])
    """Hidden widths of the top MLP; a final linear layer to one logit per task is added."""
    activation: Activation = "relu"
    """Activation of the MLPs."""
    dropout: float = 0.0
    """Dropout after each hidden MLP layer."""
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    """DLRM settings (``arch: dlrm``)."""
    dcnv2: DCNv2Config = field(default_factory=DCNv2Config)
    """DCN-V2 settings (``arch: dcnv2``)."""


# --------------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------------

ShardingType = Literal[
    "data_parallel",
    "table_wise",
    "column_wise",
    "row_wise",
    "table_row_wise",
    "table_column_wise",
    "grid_shard",
]
ComputeKernel = Literal["dense", "fused", "fused_uvm", "fused_uvm_caching"]


@dataclass(kw_only=True)
class TableConstraintConfig:
    """Planner constraints for one table (TorchRec ``ParameterConstraints``)."""

    sharding_types: list[ShardingType] = field(default_factory=list)
    """Allowed sharding types (empty = any the device supports)."""
    compute_kernels: list[ComputeKernel] = field(default_factory=list)
    """Allowed compute kernels (empty = any)."""
    pooling_factor: float = 0.0
    """Average ids per example, for the planner's cost model (0 = TorchRec's default)."""


@dataclass(kw_only=True)
class ManualShardConfig:
    """One table of a hand-built plan (bypasses the planner; how row-wise runs on CPU)."""

    type: ShardingType
    """Sharding type of this table."""
    ranks: list[int] = field(default_factory=list)
    """Ranks to place it on: one rank for table_wise, several for column_wise
    (empty = rank 0 for table_wise, all ranks otherwise)."""


@dataclass(kw_only=True)
class TopologyConfig:
    """The devices the planner plans for (TorchRec ``Topology``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Compute device (``auto`` = cuda when available)."""
    hbm_gb: float = 80.0
    """Device memory per rank, GB (used for cuda)."""
    ddr_gb: float = 128.0
    """Host memory per rank, GB."""
    ranks_per_node: int = 0
    """Ranks per node (0 = the local world size of the job)."""
    intra_host_bw_gbps: float = 0.0
    """Intra-host bandwidth per rank, GB/s (0 = TorchRec's default)."""
    inter_host_bw_gbps: float = 0.0
    """Inter-host bandwidth per rank, GB/s (0 = TorchRec's default)."""


@dataclass(kw_only=True)
class ShardingConfig:
    """How the model is split across ranks."""

    dense: Literal["ddp", "deepspeed"] = "ddp"
    """Owner of the dense part: PyTorch DDP, or a DeepSpeed engine (ZeRO, expert parallelism)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage for the dense part (``dense: deepspeed``)."""
    ep_size: int = 1
    """Expert-parallel group size (must divide the world size)."""
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    """What the planner plans for."""
    storage_reservation: float = 0.15
    """Fraction of device memory the planner keeps free for dense parts and activations."""
    constraints: dict[str, TableConstraintConfig] = field(default_factory=dict)
    """Per-table planner constraints, keyed by table name."""
    manual: dict[str, ManualShardConfig] = field(default_factory=dict)
    """A hand-built plan, keyed by table name (every table must be listed); bypasses the planner."""
    plan_timeout_s: float = 600.0
    """Collective timeout while planning and sharding; a stuck rank fails instead of hanging."""


# --------------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DenseOptimizerConfig:
    """Optimizer of the dense part (and of MoE experts)."""

    name: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    """Optimizer class."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas."""
    eps: float = 1e-8
    """Adam / Adagrad epsilon."""
    momentum: float = 0.0
    """SGD momentum."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up (to 0 at the last step for cosine and linear)."""
    grad_clip: float = 0.0
    """Clip the global norm of the dense gradients (0 = off)."""


@dataclass(kw_only=True)
class SparseOptimizerConfig:
    """Fused optimizer of the embedding tables, applied inside backward by TorchRec.

    On CPU FBGEMM offers only ``rowwise_adagrad``, ``adagrad`` and ``sgd``.
    """

    name: Literal["rowwise_adagrad", "adagrad", "sgd", "adam"] = "rowwise_adagrad"
    """Optimizer (``adam`` needs CUDA)."""
    lr: float = 0.05
    """Learning rate."""
    eps: float = 1e-8
    """Adagrad epsilon."""
    weight_decay: float = 0.0
    """L2 weight decay on the looked-up rows."""


@dataclass(kw_only=True)
class OptimizerConfig:
    """Dense and sparse optimizers."""

    dense: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    """Dense part."""
    sparse: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    """Embedding tables."""


# --------------------------------------------------------------------------------------------------
# trainer, checkpoint, metrics, launch
# --------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TrainerConfig:
    """The loop."""

    batch_size: int = 4096
    """Global batch size (split evenly across ranks)."""
    epochs: int = 1
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int = 0
    """Stop after this many steps (0 = run ``epochs`` epochs)."""
    eval_every: int = 0
    """Evaluate every this many steps (0 = only at the end)."""
    eval_batches: int = 0
    """Limit periodic evaluation to this many batches per rank (0 = the whole set; the final
    evaluation always reads the whole set)."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Dense compute dtype (never fp16: loss scaling would corrupt the fused sparse update)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train (``auto`` = cuda when available)."""
    pipeline: bool = True
    """Drive the steps with TorchRec's TrainPipelineSparseDist (overlaps the embedding
    all-to-all with compute); ``false`` runs a plain loop with the same numerics."""
    deterministic: bool = True
    """Ask torch for deterministic algorithms (bit-exact resume on CPU)."""
    aux_loss_weight: float = 0.01
    """Weight of the model's auxiliary losses (MoE load balance etc.) in the training loss."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """When and where state is saved."""

    every_steps: int = 0
    """Save every this many steps (0 = only at the end)."""
    keep_last: int = 2
    """Keep this many complete checkpoints."""
    at_end: bool = True
    """Save when training ends."""


@dataclass(kw_only=True)
class MetricsConfig:
    """What is recorded in the run directory."""

    tensorboard: bool = True
    """Write TensorBoard event files under ``<run_dir>/tensorboard``."""
    progress_bar: Literal["auto", "on", "off"] = "auto"
    """Progress bar on rank 0 (``auto`` = when stderr is a terminal)."""
    peak_tflops: float = 0.0
    """Override the device's dense peak for MFU, TFLOP/s (0 = detect from the device)."""


@dataclass(kw_only=True)
class LaunchConfig:
    """Where the job runs."""

    nnodes: int = 1
    """Nodes."""
    nproc_per_node: int = 1
    """Processes (ranks) per node."""
    run_root: str = "runs"
    """Run directories are created under this folder."""
    max_restarts: int = 0
    """Elastic restarts passed to torchrun."""


@dataclass(kw_only=True)
class JobConfig:
    """A whole recscale job."""

    name: str = "recscale"
    """Name of the job; run directories are ``<run_root>/<name>-<timestamp>``."""
    seed: int = 0
    """Seed of model initialisation and of everything random in training."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data."""
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    """Embedding tables."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model."""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    """Sharding and dense parallelism."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizers."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Training loop."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Metrics."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """Launch."""
