"""The model registry: architecture name -> ``ModelSpec`` (builder, checks, declared capabilities).

A spec builds the *dense* arch (everything but the embedding tables) from the model config and the
shapes of its inputs; the embedding tables come from ``embeddings.py``. It declares what the model
supports (``ModelCapabilities``: expert parallelism, sequence inputs, staged training) and the FLOP
protocol its dense arch implements (``CountsFlops``, or ``CountsSequenceFlops`` for sequence models),
which MFU and ``recscale flops`` use. ``check_model`` refuses a job that asks for more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from recscale.configs.capabilities import ModelCapabilities, capability_problems
from recscale.configs.schema import JobConfig, ModelConfig
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.dlrm import DLRMDense
from recscale.modules.flops import CountsFlops, CountsSequenceFlops, flop_counter, sequence_flop_counter
from recscale.modules.gca.spec import build_gca_seq, check_gca_seq
from recscale.modules.hilomoe.convert import build_moe_dense
from recscale.modules.hilomoe.spec import DEFAULT_TOWERS, check_hilomoe
from recscale.modules.kunlun.spec import build_kunlun, check_kunlun
from recscale.modules.lattice.spec import build_lattice, check_lattice
from recscale.modules.layout import PooledLayout
from recscale.modules.multitask.dense import check_multitask, wrap_multitask
from recscale.modules.window_heads import wrap_window_heads
from recscale.modules.wukong.spec import build_wukong, check_wukong


@dataclass(frozen=True)
class ModelInputs:
    """Shapes of what the dense arch receives."""

    num_dense: int
    """Dense float features N."""
    pooled: PooledLayout
    """Pooled sparse features, in the sparse arch's output order."""
    num_tasks: int
    """Logits: one per task, one per attribution window of a Zipper task (``configs.tasks.heads``)."""
    sequence_dims: dict[str, int] = field(default_factory=dict)
    """Embedding dim of each event sequence, by event type (sequence models)."""
    sequence_lengths: dict[str, int] = field(default_factory=dict)
    """Padded length (``max_length``) of each event sequence, by event type (sequence models)."""


@dataclass(frozen=True)
class ModelSpec:
    """One architecture."""

    name: str
    """Registry key (``model.arch``)."""
    description: str
    """One line for ``recscale models``."""
    build: Callable[[ModelConfig, ModelInputs], nn.Module]
    """Builds the dense arch."""
    check: Callable[[JobConfig], list[str]] = lambda cfg: []
    """Model-specific config problems (``key.path: message`` lines)."""
    supports: ModelCapabilities = ModelCapabilities()
    """What the model supports; validation refuses a job that asks for anything else."""

    @property
    def uses_sequences(self) -> bool:
        """The dense arch's forward also takes the sequence embeddings (``supports.sequences``)."""
        return self.supports.sequences

    @property
    def flop_protocol(self) -> type[CountsFlops]:
        """How the dense arch counts FLOPs: ``CountsSequenceFlops`` (at sequence lengths) or ``CountsFlops``."""
        return CountsSequenceFlops if self.supports.sequences else CountsFlops

    def counter(self, dense: nn.Module) -> CountsFlops:
        """``dense`` as its declared FLOP protocol (a TypeError naming the class if it does not implement it)."""
        if self.supports.sequences:
            return sequence_flop_counter(dense)
        return flop_counter(dense)


def _uniform_dim(cfg: JobConfig, arch: str) -> list[str]:
    dims = {t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
    if len(dims) > 1:
        return [f"embeddings.tables: {arch} needs one embedding dim for every table, got {sorted(dims)}"]
    return []


def _build_dlrm(m: ModelConfig, inputs: ModelInputs) -> nn.Module:
    dim = inputs.pooled.uniform_dim()
    assert dim is not None, "checked by _check_dlrm"
    return DLRMDense(
        num_dense=inputs.num_dense,
        num_sparse=inputs.pooled.num_features,
        embedding_dim=dim,
        bottom=m.dense_arch,
        top=m.over_arch,
        num_tasks=inputs.num_tasks,
        self_interaction=m.dlrm.interaction_self,
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
    )


def _check_dlrm(cfg: JobConfig) -> list[str]:
    out = _uniform_dim(cfg, "dlrm")
    dim = cfg.embeddings.tables[0].dim or cfg.embeddings.dim if cfg.embeddings.tables else cfg.embeddings.dim
    if cfg.data.features.dense:
        if not cfg.model.dense_arch:
            out.append("model.dense_arch: dlrm needs a bottom MLP over the dense features (got [])")
        elif cfg.model.dense_arch[-1] != dim:
            out.append(
                f"model.dense_arch: dlrm's bottom MLP must end at the embedding dim {dim}, "
                f"got {cfg.model.dense_arch[-1]}"
            )
    return out


def _build_dcnv2(m: ModelConfig, inputs: ModelInputs) -> nn.Module:
    return DCNv2Dense(
        num_dense=inputs.num_dense,
        pooled_dim=inputs.pooled.total_dim,
        bottom=m.dense_arch,
        deep=m.over_arch,
        num_cross_layers=m.dcnv2.num_cross_layers,
        low_rank=m.dcnv2.low_rank,
        structure=m.dcnv2.structure,
        num_tasks=inputs.num_tasks,
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
    )


def _build_dcnv2_hilomoe(m: ModelConfig, inputs: ModelInputs) -> nn.Module:
    return build_moe_dense(_build_dcnv2(m, inputs), m.hilomoe, DEFAULT_TOWERS["dcnv2"])


def _build_wukong_hilomoe(m: ModelConfig, inputs: ModelInputs) -> nn.Module:
    return build_moe_dense(build_wukong(m, inputs), m.hilomoe, DEFAULT_TOWERS["wukong"])


MODEL_SPECS: dict[str, ModelSpec] = {
    "dlrm": ModelSpec(
        name="dlrm",
        description="DLRM: bottom MLP, pairwise dot interaction, top MLP",
        build=_build_dlrm,
        check=_check_dlrm,
    ),
    "dcnv2": ModelSpec(
        name="dcnv2",
        description="DCN-V2: low-rank cross network + deep MLP (stacked or parallel)",
        build=_build_dcnv2,
    ),
    "wukong": ModelSpec(
        name="wukong",
        description="Wukong: stacked factorization-machine + linear-compress interaction layers, top MLP",
        build=build_wukong,
        check=check_wukong,
    ),
    "dcnv2_hilomoe": ModelSpec(
        name="dcnv2_hilomoe",
        description="DCN-V2 whose deep MLP layers are HiLoMoE blocks (hierarchical rank-1 expert routing)",
        build=_build_dcnv2_hilomoe,
        check=check_hilomoe,
        supports=ModelCapabilities(expert_parallel=True, staged_training=True),
    ),
    "wukong_hilomoe": ModelSpec(
        name="wukong_hilomoe",
        description="Wukong whose FMB MLP layers are HiLoMoE blocks",
        build=_build_wukong_hilomoe,
        check=lambda cfg: check_wukong(cfg) + check_hilomoe(cfg),
        supports=ModelCapabilities(expert_parallel=True, staged_training=True),
    ),
    "kunlun": ModelSpec(
        name="kunlun",
        description="Kunlun: GDPA + seed pooling + sliding-window attention per event type, mixture of Wukong experts",
        build=build_kunlun,
        check=check_kunlun,
        supports=ModelCapabilities(expert_parallel=True, sequences=True),
    ),
    "gca_seq": ModelSpec(
        name="gca_seq",
        description="Two-domain sequence model with gated cross-attention (or its parameter-matched baseline)",
        build=build_gca_seq,
        check=check_gca_seq,
        supports=ModelCapabilities(sequences=True),
    ),
    "lattice": ModelSpec(
        name="lattice",
        description="Lattice: feature tokens, RoPE/QK-norm Transformer blocks over optional sequences, Wukong fusion",
        build=build_lattice,
        check=check_lattice,
        supports=ModelCapabilities(sequences=True, domains=True),
    ),
}


def get_spec(arch: str) -> ModelSpec:
    """The spec of ``arch``; a clear error naming the known ones otherwise."""
    if arch not in MODEL_SPECS:
        raise ValueError(f"model.arch: unknown architecture {arch!r}; known: {', '.join(sorted(MODEL_SPECS))}")
    return MODEL_SPECS[arch]


def build_dense(spec: ModelSpec, m: ModelConfig, inputs: ModelInputs) -> nn.Module:
    """``spec``'s dense arch with its per-task layers (``model.multitask``) and shared-logit window heads.

    The window heads wrap it when a delayed task asks for ``offset`` or ``scaled`` ones
    (``model.tasks[*].window_heads``).
    """
    dense = wrap_multitask(spec.build(m, inputs), m.multitask, inputs.num_tasks, m.activation, m.dropout)
    tasks = m.tasks
    return wrap_window_heads(
        dense, [t.windows for t in tasks], [t.window_heads for t in tasks], [t.window_shares for t in tasks]
    )


def check_model(cfg: JobConfig) -> list[str]:
    """Problems of the model section: unknown arch, what the job asks beyond the model's capabilities, arch checks."""
    if cfg.model.arch not in MODEL_SPECS:
        return [f"model.arch: unknown architecture {cfg.model.arch!r}; known: {', '.join(sorted(MODEL_SPECS))}"]
    capabilities = {name: spec.supports for name, spec in MODEL_SPECS.items()}
    return capability_problems(cfg, capabilities) + MODEL_SPECS[cfg.model.arch].check(cfg) + check_multitask(cfg)
