"""The ``launch`` section and ``JobConfig``, the whole tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recscale.configs.schema.data import DataConfig
from recscale.configs.schema.model import EmbeddingsConfig, ModelConfig
from recscale.configs.schema.sharding import ShardingConfig
from recscale.configs.schema.training import CheckpointConfig, MetricsConfig, OptimizerConfig, TrainerConfig


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
