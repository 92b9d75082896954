"""The ``optimizer``, ``trainer``, ``checkpoint`` and ``metrics`` sections: how a job trains and what it records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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

    metric: Literal["auc", "logloss", "auc_minus_logloss", "mse"] = "auc"
    """What "improved" means: a higher AUC, a lower logloss, a higher AUC - logloss (FuxiCTR's default
    monitor), or a lower MSE (regression tasks). With several tasks these are the task-weighted means
    (``model.tasks[*].weight``) of the per-task values."""
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
class StreamingConfig:
    """Training period by period over a time-partitioned dataset, with progressive validation.

    ``data.train_path`` holds one subdirectory per period (``day=2026-01-01/``, ... in name order). The
    model, optimizer state and learning rate carry over from period to period; before the run trains on a
    period it scores it (the model has only seen earlier periods), and those scores give the per-period
    metrics (NE, AUC, logloss) a production model is judged by.
    """

    enabled: bool = False
    """Train period by period (``trainer.epochs`` and the epoch-end evaluations do not apply)."""
    passes: int = 1
    """Passes over each period before the next one (1 = single pass, as data arrives in production)."""
    predictions: bool = False
    """Keep each period's progressive scores (logits, one column per task) as
    ``<run_dir>/predictions/<period>/rank<R>.parquet``: the predictions of a model that has seen only
    earlier periods, in the period's row order; ``recscale data attach-teacher`` joins them to data as a
    teacher column."""
    skip_short_first: bool = False
    """Skip the leading periods too short for one step (a stream that starts part-way through its first day),
    with a warning; their rows are neither trained on nor scored, and the summary lists them
    (``streaming.skipped``). Off: such a period is refused by name, as is a short period anywhere else."""


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
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    """Period-by-period training with progressive validation (off by default)."""
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
    async_save: bool = False
    """Save asynchronously: a save copies this rank's state to host memory (one more copy of it, kept
    for the next save) and training goes on while the files are written; the checkpoint becomes
    complete (renamed into place) once every rank has written its files. The ``best`` checkpoint is
    always saved synchronously."""
    io_threads: int = 1
    """Threads (and data files) with which each rank writes its share of a checkpoint."""
    init_from: str = ""
    """Start from the weights of this checkpoint directory (fine-tuning; ``recscale train --init-from``
    sets it): tables and dense weights are loaded, the optimizer state, learning-rate schedule, data
    position and step count start fresh. Every table and dense tensor must have the same shape as in
    this config. A run that resumes from a checkpoint of its own ignores it."""


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
