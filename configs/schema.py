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
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    """Converter settings (``recscale data convert``)."""


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
    init_std: float = 0.0
    """Initialise every table N(0, init_std²) (FuxiCTR/BARS use 1e-4); 0 keeps TorchRec's default,
    uniform in ±sqrt(1 / rows)."""


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
class WukongConfig:
    """Wukong (Zhang et al. 2024): embedding tokens -> l stacked FMB + LCB layers -> head MLP.

    The head is ``model.over_arch``; the dense features go through ``model.dense_arch`` and a
    linear layer to ``dense_tokens`` tokens. See ``docs/models/wukong.md``.
    """

    num_layers: int = 2
    """Interaction layers l."""
    num_fmb_tokens: int = 8
    """Tokens n_F each Factorization Machine Block emits."""
    num_lcb_tokens: int = 8
    """Tokens n_L each Linear Compress Block emits."""
    fm_rank: int = 24
    """Columns k of the FM projection Y (optimized FM ``X (Xᵀ Y)``)."""
    fmb_mlp: list[int] = field(default_factory=lambda: [512, 512])
    """Hidden widths of the FMB MLP; a linear output layer to ``num_fmb_tokens * dim`` is added."""
    attentive_fm: bool = False
    """Input-attentive Y: computed per example from the LCB output by an MLP instead of learned."""
    attentive_mlp: list[int] = field(default_factory=list)
    """Hidden widths of the MLP that computes the attentive Y (empty = one linear layer)."""
    dim: int = 0
    """Token width d (0 = the tables' common embedding dim)."""
    tokens_per_feature: dict[str, int] = field(default_factory=dict)
    """Sparse features that yield several tokens (projected from their pooled embedding), by name;
    unlisted features yield one."""
    grouped_features: list[str] = field(default_factory=list)
    """Small sparse features concatenated and mapped to ``grouped_tokens`` tokens by an MLP."""
    grouped_tokens: int = 1
    """Tokens made from ``grouped_features``."""
    grouped_mlp: list[int] = field(default_factory=list)
    """Hidden widths of the grouped-feature MLP."""
    dense_tokens: int = 1
    """Tokens made from the dense features."""


@dataclass(kw_only=True)
class HiLoMoEConfig:
    """HiLoMoE: MLP Linear layers become W0 plus L hierarchically routed layers of K rank-1 experts.

    See ``docs/models/hilomoe.md``.
    """

    towers: list[str] = field(default_factory=list)
    """Dotted paths of the MLP towers to convert, ``*`` matching any list index (``deep``,
    ``layers.*.fmb.mlp``); empty = the architecture's default towers."""
    layers: list[int] = field(default_factory=list)
    """Which Linear layers of each tower to convert, by position (negative counts from the end);
    empty = all."""
    num_experts: int = 8
    """Rank-1 experts K per MoE layer."""
    num_layers: int = 2
    """Stacked MoE layers L per converted Linear."""
    routing: Literal["dense", "topk"] = "dense"
    """``dense``: softmax over all K experts; ``topk``: softmax over the ``top_k`` best."""
    top_k: int = 2
    """Experts per token and layer when ``routing: topk``."""
    router_keys: Literal["tied", "separate"] = "tied"
    """``tied``: the experts' down-projections V are the router keys; ``separate``: own keys."""
    query: Literal["linear", "identity"] = "linear"
    """First routing query: a learned linear map of the input, or the input itself."""
    logit_scale: float = 0.0
    """Router logits are ``q Vᵀ * logit_scale`` (0 = 1/sqrt(d_in))."""
    route_dropout: float = 0.0
    """Training-time "expert dropout": each route's combine weight is zeroed with this probability
    (kept ones scaled by 1/(1-p)), so a token loses single experts' contributions; the routing chain
    and auxiliary losses use the undropped scores. 0 = off."""
    expert_init_std: float = 0.0
    """Init std of the up-projections U (0 = zeros: the model starts as its base model)."""
    expert_compute: Literal["dense", "gather"] = "dense"
    """Reference expert math: all K experts as two matmuls (fast for small K), or only the routed
    experts' rows gathered per token (FLOPs = active experts)."""
    load_balance_weight: float = 0.01
    """Weight of the Switch load-balance loss in the dense arch's auxiliary loss."""
    z_loss_weight: float = 0.001
    """Weight of the router z-loss."""
    diversity_weight: float = 0.0
    """Weight of the expert-diversity penalty ``||V̂ V̂ᵀ - I||²`` (0 = off)."""
    diversity_normalize: bool = True
    """Normalise the rows of V before the diversity penalty (penalise angles, not norms)."""


GDPAActivation = Literal["gelu", "gelu_tanh", "silu", "relu", "relu2", "leaky_relu", "hardswish", "tanh", "identity"]


@dataclass(kw_only=True)
class KunlunEventConfig:
    """Event-level personalization: the sequence stack of one event type (``data.features.sequences``).

    Every field with a 0 default inherits the ``model.kunlun`` value of the same meaning.
    """

    name: str
    """Event type; must name one of ``data.features.sequences``."""
    dim: int = 0
    """Width d_e of this event's sequence tokens (0 = ``kunlun.dim``); the embeddings are projected."""
    num_heads: int = 0
    """Heads of GDPA, sliding-window attention and seed attention (0 = ``kunlun.num_heads``)."""
    num_layers: int = 0
    """Sequence layers of this event (0 = ``kunlun.num_layers``; at most that); after its last layer
    the event's summary is reused unchanged by the remaining global layers."""
    num_seeds: int = 0
    """Learnable HSP seeds (0 = ``kunlun.num_seeds``)."""
    num_summary_tokens: int = 0
    """Summary tokens HSP hands to the interaction module (0 = ``kunlun.num_summary_tokens``)."""
    window: int = -1
    """Sliding-window half width w: a token attends to tokens with |i - j| <= w (0 = full attention,
    -1 = ``kunlun.window``)."""


@dataclass(kw_only=True)
class MoWEConfig:
    """Mixture of Wukong Experts: the non-sequence interaction module of every Kunlun layer."""

    num_experts: int = 2
    """Wukong experts E."""
    partition: Literal["strided", "contiguous", "routed"] = "strided"
    """How tokens reach experts (the sources do not say): ``strided`` (token i -> expert i mod E),
    ``contiguous`` (E consecutive chunks) — each expert sees only its tokens and emits its share
    of the output tokens — or ``routed`` (a top-k router per example; each chosen expert sees all
    tokens and emits all output tokens, mixed by the router weights)."""
    top_k: int = 1
    """Experts per example when ``partition: routed``."""
    num_layers: int = 1
    """Stacked Wukong layers per expert."""
    fm_rank: int = 8
    """Columns k of each expert's optimized FM ``X (Xᵀ Y)``."""
    fmb_mlp: list[int] = field(default_factory=lambda: [128])
    """Hidden widths of each expert's FMB MLP."""
    load_balance_weight: float = 0.01
    """Weight of the Switch load-balance loss in the auxiliary loss (``routed`` only)."""


@dataclass(kw_only=True)
class KunlunConfig:
    """Kunlun (papers.md §2): a non-sequence token side and per-event sequence stacks, exchanging summaries.

    GDPA, hierarchical seed pooling, sliding-window attention, computation skip, event-level
    personalization and a mixture of Wukong experts. See ``docs/models/kunlun.md``.
    """

    dim: int = 64
    """Token width d of the non-sequence side (and the default sequence width)."""
    num_layers: int = 2
    """Global Kunlun layers (each: X_sum, sequence layer per event, interaction)."""
    num_heads: int = 2
    """Default attention heads per event."""
    num_seeds: int = 16
    """Default HSP seeds per event."""
    num_summary_tokens: int = 4
    """Default HSP summary tokens per event."""
    window: int = 0
    """Default sliding-window half width (0 = full self-attention)."""
    events: list[KunlunEventConfig] = field(default_factory=list)
    """Per-event-type settings; empty = every sequence uses the defaults, otherwise every sequence
    must be listed exactly once."""
    dense_tokens: int = 1
    """Tokens made from the dense features (``model.dense_arch`` MLP, then a linear map)."""
    num_sum_tokens: int = 4
    """Tokens n_sum of the gated compression X_sum of the non-sequence tokens."""
    xsum_gate: Literal["self", "sigmoid_product"] = "self"
    """X_sum gate on the token-compressed Z: ``self`` = Z * sigmoid(Linear(Z)); ``sigmoid_product`` =
    sigmoid(Z * Linear(Z)) (the literal reading of papers.md §2.2)."""
    gdpa_activation: GDPAActivation = "silu"
    """Element-wise activation that replaces softmax in GDPA."""
    gdpa_temperature: Literal["max_length", "sqrt_dim", "one"] = "max_length"
    """GDPA divides Q Kᵀ by: the event's max sequence length (reported best), sqrt(head dim), or 1."""
    gdpa_scale: float = 1.0
    """GDPA multiplies the activated scores by this (the kernel's qk_scale, applied after act)."""
    gdpa_kv_tokens: int = 0
    """K/V tokens GDPA generates from X_sum (0 = one per X_sum token, no token mixing)."""
    hsp_kron_terms: int = 4
    """Terms k of SumKronLinear (seeds -> summary tokens)."""
    compskip: bool = True
    """Computation skip: even sequence layers run GDPA + a fresh HSP summary, odd layers run
    sliding-window attention and reuse the summary; off = every layer runs all three."""
    norm: Literal["post", "pre"] = "post"
    """Residual blocks: ``post`` = LN(s + f(s)) as in papers.md §2.4; ``pre`` = s + f(LN(s))."""
    rope: Literal["none", "position", "time"] = "none"
    """Rotary encoding in sliding-window attention: none, by event index, or by log time gap (ROTE)."""
    rope_base: float = 10_000.0
    """Rotary base (frequencies base^(-2i/d_head))."""
    rote_time_scale: float = 60.0
    """ROTE position of event i: log(1 + (t_newest - t_i) / rote_time_scale), seconds."""
    swa_causal: bool = False
    """Sliding window over older events only (j in [i - w, i]) instead of |i - j| <= w."""
    attention_backend: Literal["reference", "sdpa", "flex"] = "sdpa"
    """Softmax attention kernel: plain matmuls, ``scaled_dot_product_attention`` with a boolean mask,
    or FlexAttention with a block mask (CUDA for training; forward-only on CPU)."""
    mowe: MoWEConfig = field(default_factory=MoWEConfig)
    """The interaction module."""


@dataclass(kw_only=True)
class GCAConfig:
    """Two-domain sequence model with gated cross-attention (arch ``gca_seq``). See ``docs/models/gca.md``."""

    domains: list[str] = field(default_factory=list)
    """The two sequences (``data.features.sequences`` names), domain A then B; empty = the first two."""
    variant: Literal["gca", "baseline", "wider_baseline"] = "gca"
    """``gca``: with the blocks; ``baseline``: without; ``wider_baseline``: without, FFN widened until
    its parameter count matches the ``gca`` variant's."""
    dim: int = 32
    """Sequence token width d."""
    num_heads: int = 2
    """Attention heads (self, cross and pooling attention)."""
    num_layers: int = 2
    """Self-attention encoder layers per domain."""
    ffn_dim: int = 64
    """Hidden width of each encoder layer's feed-forward block."""
    placement: Literal["early", "stack"] = "early"
    """``early``: one GCA after the first encoder layer; ``stack``: one after every layer."""
    bidirectional: bool = True
    """Domain B also queries domain A (one block per direction); false = only A queries B."""
    gate: Literal["scalar", "data"] = "scalar"
    """``scalar``: one learnable alpha per block; ``data``: element-wise from Linear([X, X'])."""
    gate_activation: Literal["sigmoid", "tanh"] = "sigmoid"
    """Squashing of the gate."""
    gate_init: float = 0.0
    """Initial alpha (scalar gate) or gate bias (data gate), before the activation."""
    layer_norm: bool = True
    """LayerNorm after the gated residual: LN(X + g * X')."""
    num_domains: int = 2
    """Values of the ``domain`` column (an embedding of the example's domain feeds the head)."""
    attention_backend: Literal["reference", "sdpa"] = "sdpa"
    """Attention kernel: plain matmuls or ``scaled_dot_product_attention``."""


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
    batch_norm: bool = False
    """Batch norm after each hidden Linear of the top / deep MLP (before its activation)."""
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    """DLRM settings (``arch: dlrm``)."""
    dcnv2: DCNv2Config = field(default_factory=DCNv2Config)
    """DCN-V2 settings (``arch: dcnv2``)."""
    wukong: WukongConfig = field(default_factory=WukongConfig)
    """Wukong settings (``arch: wukong``, ``wukong_hilomoe``)."""
    hilomoe: HiLoMoEConfig = field(default_factory=HiLoMoEConfig)
    """HiLoMoE settings (``arch: dcnv2_hilomoe``, ``wukong_hilomoe``)."""
    kunlun: KunlunConfig = field(default_factory=KunlunConfig)
    """Kunlun settings (``arch: kunlun``)."""
    gca: GCAConfig = field(default_factory=GCAConfig)
    """Gated cross-attention two-domain sequence model (``arch: gca_seq``)."""


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
class MoEParallelConfig:
    """How HiLoMoE layers run under DeepSpeed expert parallelism (``sharding.dense: deepspeed``)."""

    dispatch: Literal["one_round", "per_layer"] = "one_round"
    """``one_round``: all L MoE layers' tokens in one all-to-all pair (routes are known after the
    score chain); ``per_layer``: one all-to-all pair per MoE layer (for comparison)."""
    capacity_factor: float = 0.0
    """Expert capacity = ceil(tokens * top_k / K * capacity_factor) per rank; routes beyond it are
    dropped (their expert term is 0). 0 = never drop (capacity = tokens per rank)."""
    min_capacity: int = 4
    """Lower bound of the expert capacity when ``capacity_factor`` > 0."""
    balance_stats: Literal["global", "local"] = "global"
    """Load-balance statistics over the global batch (one small all-reduce per layer; equal to the
    single-device model) or over each rank's batch."""


@dataclass(kw_only=True)
class ShardingConfig:
    """How the model is split across ranks."""

    dense: Literal["ddp", "deepspeed"] = "ddp"
    """Owner of the dense part: PyTorch DDP, or a DeepSpeed engine (ZeRO, expert parallelism)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage for the dense part (``dense: deepspeed``)."""
    ep_size: int = 1
    """Expert-parallel group size (must divide the world size)."""
    moe: MoEParallelConfig = field(default_factory=MoEParallelConfig)
    """Expert-parallel MoE settings."""
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    """What the planner plans for."""
    storage_reservation: float = 0.15
    """Fraction of device memory the planner keeps free for dense parts and activations."""
    constraints: dict[str, TableConstraintConfig] = field(default_factory=dict)
    """Per-table planner constraints, keyed by table name; the key ``"*"`` applies to every table
    without its own entry."""
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
class StageConfig:
    """One stage of a staged (HiLoMoE three-stage) schedule; see ``docs/models/hilomoe.md``.

    Learning rates of a stage are the optimizer's lr times the role's scale; a role that the stage
    does not train gets lr 0 whatever its scale. Aux-loss weights are ``model.hilomoe``'s times the
    stage's scales.
    """

    name: str
    """Label written at the stage boundary in ``metrics.jsonl``."""
    train: Literal["backbone", "experts", "all"]
    """``backbone``: everything but the MoE experts and routers, experts off (the base model);
    ``experts``: only routers and experts, backbone (embeddings included) frozen; ``all``: jointly."""
    steps: int
    """Steps in this stage (its most, with ``end_on_plateau``)."""
    end_on_plateau: bool = False
    """End the stage early, instead of the run, when ``trainer.early_stopping.patience`` full evaluations
    in a row inside it did not improve; the next stage starts at once (the last stage ends the run)."""
    start_from_best: bool = False
    """Begin from the weights (and optimizer state) of the best full evaluation so far, i.e.
    ``checkpoints/best``, rather than from where the previous stage stopped; needs
    ``trainer.early_stopping.restore_best``. Under the BARS protocol a stage's last epochs are past its
    best (they are what stopped it), so the next stage should not build on them."""
    backbone_lr_scale: float = 1.0
    """Scale of the dense backbone's learning rate."""
    expert_lr_scale: float = 1.0
    """Scale of the rank-1 experts' (V, U) learning rate."""
    router_lr_scale: float = 1.0
    """Scale of the routers' (query projection, separate keys) learning rate."""
    sparse_lr_scale: float = 1.0
    """Scale of the embedding tables' learning rate (the backbone's sparse half)."""
    load_balance_scale: float = 1.0
    """Scale of ``model.hilomoe.load_balance_weight`` in this stage."""
    z_loss_scale: float = 1.0
    """Scale of ``model.hilomoe.z_loss_weight``."""
    diversity_scale: float = 1.0
    """Scale of ``model.hilomoe.diversity_weight``."""


@dataclass(kw_only=True)
class EarlyStoppingConfig:
    """What the full validation evaluations do to the run (the BARS / FuxiCTR protocol).

    A full evaluation reads the whole validation set: each epoch's end (``trainer.eval_each_epoch``)
    and periodic ones with ``trainer.eval_batches: 0``.
    """

    metric: Literal["auc", "logloss", "auc_minus_logloss"] = "auc"
    """What "improved" means (first task): a higher AUC, a lower logloss, or a higher AUC - logloss
    (FuxiCTR's default monitor)."""
    min_delta: float = 0.0
    """Improvements smaller than this do not count."""
    lr_decay: float = 1.0
    """Multiply every learning rate (dense and tables) by this after a full evaluation that did not
    improve (1 = never; the protocol uses 0.1)."""
    patience: int = 0
    """Stop after this many consecutive full evaluations without improvement (0 = never stop early)."""
    restore_best: bool = False
    """End with the weights of the best full evaluation (kept as ``checkpoints/best``)."""


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
    eval_each_epoch: bool = False
    """Evaluate the whole validation set at the end of every epoch."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Learning-rate decay on plateau, early stopping, best-weights restore."""
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
    stages: list[StageConfig] = field(default_factory=list)
    """Staged training (HiLoMoE's three stages), run in order; empty = one stage training all."""
    collective_timeout_s: float = 600.0
    """After set-up, a collective that does not complete in this many seconds fails the job with
    an error naming the ranks that did not arrive (instead of hanging)."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """When and where state is saved."""

    every_steps: int = 0
    """Save every this many steps (0 = only at the end)."""
    keep_last: int = 2
    """Keep this many complete checkpoints."""
    at_end: bool = True
    """Save when training ends."""
    deepspeed_files: bool = True
    """With ``sharding.dense: deepspeed``, also write DeepSpeed's own dense files (``dense/dense/``, what
    ``zero_to_fp32.py`` reads) beside the layout-free form that every layout reads. ``false`` halves
    the dense part of a checkpoint; a resume at the same layout then reads the layout-free form, which
    continues bit-exactly there too (tests/trainer/test_resume.py)."""


@dataclass(kw_only=True)
class MetricsConfig:
    """What is recorded in the run directory."""

    tensorboard: bool = True
    """Write TensorBoard event files under ``<run_dir>/tensorboard``."""
    progress_bar: Literal["auto", "always", "never"] = "auto"
    """Progress bar on rank 0 (``auto`` = when stderr is a terminal; ``never`` = plain log lines).
    (Not on/off: YAML reads those as booleans.)"""
    peak_tflops: float = 0.0
    """Override the device's dense peak for MFU, TFLOP/s (0 = detect from the device)."""
    profile_steps: int = 0
    """Record this many steps with ``torch.profiler`` into ``<run_dir>/profile/`` (trace + per-module
    time and MFU table; ``recscale train --profile`` sets 5). 0 = off."""
    profile_wait_steps: int = 5
    """Steps trained before the profiled ones (past warm-up and pipeline fill)."""


@dataclass(kw_only=True)
class SlurmConfig:
    """Slurm run options of ``recscale launch --scheduler slurm``.

    An empty value leaves the option to the ``[slurm]`` section of ``.torchxconfig``, else to Slurm.
    """

    partition: str = ""
    """Partition to submit to."""
    time: str = ""
    """Time limit (``minutes``, ``hours:minutes:seconds``, ``days-hours``...)."""
    account: str = ""
    """Account to charge."""
    qos: str = ""
    """Quality of service."""
    constraint: str = ""
    """Node features the nodes must have."""


@dataclass(kw_only=True)
class LaunchConfig:
    """Where the job runs."""

    nnodes: int = 1
    """Nodes."""
    nproc_per_node: int = 1
    """Processes (ranks) per node."""
    run_root: str = "runs"
    """Run directories are created under this folder (on a file system every node sees, for Slurm)."""
    max_restarts: int = 0
    """Elastic restarts passed to torchrun: after a worker dies, every rank restarts from the newest
    complete checkpoint, at most this many times."""
    scheduler: Literal["local_cwd", "slurm"] = "local_cwd"
    """TorchX scheduler of ``recscale launch`` when ``--scheduler`` is not given."""
    job_name: str = ""
    """Name of the TorchX app and of the scheduler's job (empty = ``name``)."""
    cpus_per_node: int = 0
    """CPUs requested per node (0 = one per rank)."""
    gpus_per_node: int = 0
    """GPUs requested per node (0 = none: a CPU job)."""
    mem_mb_per_node: int = 0
    """Memory requested per node, MB (0 = the scheduler's default)."""
    rdzv_port: int = 0
    """Port of the rendezvous store on the first node (0 = a port free on the submitting host)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Slurm run options."""


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
