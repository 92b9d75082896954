"""The ``embeddings`` and ``model`` sections: embedding tables and every architecture's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recscale.configs.schema.lattice import LatticeConfig
from recscale.configs.schema.perturbation import PerturbationConfig
from recscale.configs.schema.tasks import TaskConfig, TeacherConfig

Eviction = Literal["lfu", "lru", "distance_lfu"]


@dataclass(kw_only=True)
class ManagedCollisionConfig:
    """How a ``collisions: managed`` table admits raw ids (TorchRec's managed-collision hashing, MCH).

    The table's ``num_embeddings`` rows are slots: every id admitted gets a slot of its own; ids not
    (yet) admitted share the last slot. Every ``eviction_interval`` training steps, the ids seen since the
    last round compete with the ids holding slots under the eviction policy; the losers give their slots
    to the winners.
    """

    eviction: Eviction = "lfu"
    """``lfu``: keep the most frequently seen ids (counts since admission); ``lru``: keep the most recently
    seen; ``distance_lfu``: frequency discounted by the steps since last seen (``distance_decay``)."""
    eviction_interval: int = 1
    """Training steps between eviction rounds (ids are admitted only at a round)."""
    distance_decay: float = 1.0
    """``distance_lfu``: score = count / (steps since last seen) ** decay."""
    input_hash_size: int = 2**63 - 1
    """Raw ids are taken modulo this before admission (negative ids become non-negative)."""
    evicted_rows: Literal["reset", "keep"] = "reset"
    """``reset``: a slot given to a new id starts from a zero row and zero optimizer state (what TorchRec's
    sharded managed-collision tables do); ``keep``: the new id inherits the evicted id's trained row."""


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
    data_type: Literal["fp32", "fp16"] = "fp32"
    """Storage type of the rows (and of the fused optimizer's row updates): ``fp16`` halves the table's
    memory and the bytes each lookup reads, which is what large GPU tables usually run with. The
    planner's memory estimates, the embedding-traffic metric and checkpoints use it."""
    collisions: Literal["none", "managed"] = "none"
    """``none``: features bring rows (their ``hashing`` maps raw ids to rows). ``managed``: features bring
    raw 64-bit ids (``hashing: none``, any value) and the table's rows are slots handed out by managed-collision
    hashing (``managed``); pooled features only."""
    managed: ManagedCollisionConfig = field(default_factory=ManagedCollisionConfig)
    """The slot policy of a ``collisions: managed`` table."""


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
    expert_compute: Literal["dense", "sorted"] = "dense"
    """How routed experts run on one device (``routed`` only): ``dense`` runs every expert on every
    example and weights off-route outputs 0 (no host synchronisation, E / top_k times the expert FLOPs);
    ``sorted`` runs each expert on its own examples only (active FLOPs, one device-to-host read of the
    E row counts per layer). Under ``sharding.ep_size > 1`` the experts are spread over ranks instead."""


@dataclass(kw_only=True)
class KunlunConfig:
    """Kunlun (arXiv 2602.10016): a non-sequence token side and per-event sequence stacks, exchanging summaries.

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
    sigmoid(Z * Linear(Z)) (the literal reading of the sources)."""
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
    """Residual blocks: ``post`` = LN(s + f(s)) as in the sources; ``pre`` = s + f(LN(s))."""
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
class MultiTaskConfig:
    """Per-task layers over a dense arch's representation (``structure`` other than ``none``).

    The arch (``dlrm`` or ``dcnv2``) becomes the shared bottom: its last layer (one logit per task) is
    replaced by ``structure`` and one tower and one logit per task. See ``docs/models/multitask.md``.
    """

    structure: Literal["none", "shared_bottom", "mmoe", "ple"] = "none"
    """``shared_bottom``: every task's tower reads the bottom's output; ``mmoe``: shared experts, a gate per
    task (Ma et al. 2018); ``ple``: task and shared experts over ``num_levels`` levels (Tang et al. 2020;
    one level = CGC)."""
    num_experts: int = 4
    """``mmoe``: shared experts."""
    task_experts: int = 1
    """``ple``: experts of each task, per level."""
    shared_experts: int = 2
    """``ple``: shared experts, per level."""
    num_levels: int = 1
    """``ple``: extraction levels."""
    expert_widths: list[int] = field(default_factory=lambda: [128, 64])
    """Each expert's MLP widths (``mmoe``, ``ple``)."""
    gate_hidden: list[int] = field(default_factory=list)
    """MLP widths before each gate's Linear (empty: ``Linear -> softmax``, the papers' gate)."""
    shared_gate: Literal["all", "shared_only"] = "all"
    """``ple``: the shared stream's gate mixes every expert of the level (the paper) or only the shared
    experts (FuxiCTR's variant)."""
    tower: list[int] = field(default_factory=lambda: [64])
    """Hidden widths of each task's tower (a Linear to the task's logit follows)."""
    expert_input: Literal["representation", "interaction"] = "representation"
    """What the experts of ``mmoe`` / ``ple`` read. ``representation``: the arch's last hidden layer (after its
    top / deep MLP, which all tasks share). ``interaction``: the arch's feature interactions before that MLP
    (DCN-V2's cross output, DLRM's dot products), the experts replacing the shared MLP, as in the MMoE and
    PLE papers, where the experts are the bottom networks."""


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
    lattice: LatticeConfig = field(default_factory=LatticeConfig)
    """Lattice settings (``arch: lattice``)."""
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    """Per-task layers over the arch (shared-bottom, MMoE, PLE)."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """What the model predicts: name, label column, loss, weight, domains of each task (one logit each).
    Empty = one ``bce`` task of weight 1 per column of ``data.features.labels``, named like the column."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Learning from a teacher's stored logits (soft labels, input features); needs ``data.features.teacher``."""
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    """Training on perturbed embeddings too: LSPR or the SCR baseline (``docs/regularisation.md``); off by default."""
    task_normalization: Literal["batch", "rows"] = "batch"
    """How a task that applies to some rows only (``domains``, ``given``) averages its loss: over the whole
    batch (``batch``: its rows' sum / B, the same on any number of ranks, so its gradient follows its share
    of the traffic), or over its own rows in each rank's batch (``rows``: a per-row mean that depends on
    how rows fall on ranks)."""
    task_weighting: Literal["fixed", "uncertainty"] = "fixed"
    """How the tasks' losses are weighted. ``fixed``: by ``model.tasks[*].weight`` only. ``uncertainty``
    (Kendall, Gal and Cipolla, CVPR 2018): each task also learns a log variance ``s_t`` (starting at 0,
    trained by the dense optimizer, checkpointed with the dense arch) and its term becomes
    ``w_t · (exp(-s_t) · L_t + s_t / 2)`` for a ``bce`` task and ``w_t · (exp(-s_t) · L_t / 2 + s_t / 2)``
    for a ``regression`` task (the paper's classification and Gaussian forms, ``s = log σ²``); ``w_t`` is the
    normalised fixed weight. Train records carry ``task_weight/<task>`` = ``exp(-s_t)``."""
