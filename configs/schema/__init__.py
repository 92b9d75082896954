"""The typed schema of a recscale job: one dataclass tree, loaded from YAML presets.

One module per group of sections (``data``, ``model``, ``sharding``, ``training``, ``job``); every
class is importable from here.

Every section is a ``kw_only`` dataclass whose fields carry their defaults and a docstring-style
comment. Types are checked when YAML is loaded (:mod:`recscale.configs.loader`) and values are
checked by :func:`recscale.configs.validate.validate` with the key path in every message, before
any process starts. Components receive only their own section (``cfg.sharding``, ``cfg.trainer``),
never the whole tree.
"""

from __future__ import annotations

from recscale.configs.schema.data import (
    ConvertConfig,
    DataConfig,
    FeatureSchemaConfig,
    FieldRemapConfig,
    GraphHashConfig,
    Hashing,
    ReaderConfig,
    SequenceFeatureConfig,
    SparseFeatureConfig,
    SyntheticConfig,
    ZipperConfig,
)
from recscale.configs.schema.job import (
    JobConfig,
    LaunchConfig,
    SlurmConfig,
)
from recscale.configs.schema.lattice import LatticeConfig as LatticeConfig
from recscale.configs.schema.model import (
    Activation,
    DCNv2Config,
    DLRMConfig,
    EmbeddingsConfig,
    GCAConfig,
    GDPAActivation,
    HiLoMoEConfig,
    KunlunConfig,
    KunlunEventConfig,
    ModelConfig,
    MoWEConfig,
    MultiTaskConfig,
    TableConfig,
    WukongConfig,
)
from recscale.configs.schema.perturbation import PerturbationConfig
from recscale.configs.schema.sharding import (
    ComputeKernel,
    ManualShardConfig,
    MoEParallelConfig,
    ShardingConfig,
    ShardingType,
    TableConstraintConfig,
    TopologyConfig,
)
from recscale.configs.schema.tasks import TaskConfig, TeacherConfig
from recscale.configs.schema.training import (
    CheckpointConfig,
    DenseOptimizerConfig,
    EarlyStoppingConfig,
    MetricsConfig,
    OptimizerConfig,
    SparseOptimizerConfig,
    StageConfig,
    StreamingConfig,
    TrainerConfig,
)

__all__ = [
    "Activation",
    "CheckpointConfig",
    "ComputeKernel",
    "ConvertConfig",
    "FieldRemapConfig",
    "GraphHashConfig",
    "DCNv2Config",
    "DLRMConfig",
    "DataConfig",
    "DenseOptimizerConfig",
    "EarlyStoppingConfig",
    "EmbeddingsConfig",
    "FeatureSchemaConfig",
    "GCAConfig",
    "GDPAActivation",
    "Hashing",
    "HiLoMoEConfig",
    "JobConfig",
    "KunlunConfig",
    "KunlunEventConfig",
    "LaunchConfig",
    "ManualShardConfig",
    "MetricsConfig",
    "MoEParallelConfig",
    "MoWEConfig",
    "ModelConfig",
    "MultiTaskConfig",
    "OptimizerConfig",
    "PerturbationConfig",
    "ReaderConfig",
    "SequenceFeatureConfig",
    "ShardingConfig",
    "ShardingType",
    "SlurmConfig",
    "SparseFeatureConfig",
    "SparseOptimizerConfig",
    "StageConfig",
    "StreamingConfig",
    "SyntheticConfig",
    "TableConfig",
    "TaskConfig",
    "TeacherConfig",
    "ZipperConfig",
    "TableConstraintConfig",
    "TopologyConfig",
    "TrainerConfig",
    "WukongConfig",
]
