"""Config -> model: the embedding tables (on ``meta`` until sharded) and the dense arch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recscale.configs.schema import JobConfig
from recscale.configs.tasks import heads, resolve_tasks
from recscale.modules.distillation import DistilledDense
from recscale.modules.embeddings import SparseArch, pooled_layout, sequence_table_configs, table_configs
from recscale.modules.flops import FlopCount, total
from recscale.modules.managed_ids import ManagedIds, build_managed_ids
from recscale.modules.managed_rows import RowReset
from recscale.modules.model import RecModel
from recscale.modules.perturbation import Perturbation
from recscale.modules.registry import ModelInputs, build_dense, get_spec
from recscale.modules.task_uncertainty import TaskUncertainty
from recscale.modules.tasks import Distillation, TaskLoss, tasks_from_config


@dataclass
class BuiltModel:
    """The two halves of a model, before any parallelism is applied."""

    sparse: SparseArch
    """Embedding tables (``meta`` unless built on a real device for a reference run)."""
    dense: nn.Module
    """Dense arch, on the training device."""
    inputs: ModelInputs
    """Shapes the dense arch was built for."""
    uses_sequences: bool = False
    """The dense arch takes the padded event sequences (``ModelSpec.uses_sequences``)."""
    uses_timestamps: bool = False
    """Some event sequence has a timestamp column, passed on with the sequences."""
    uses_domain: bool = False
    """The dense arch reads ``batch.domain`` (``ModelCapabilities.domains`` and a domain column)."""
    task_loss: TaskLoss | None = None
    """The tasks' loss (``model.tasks``); None = equal-weight BCE per logit."""
    teacher_clip: float = 0.0
    """> 0: the teacher's logits are dense inputs, clipped to this (``RecModel``)."""
    perturbation: Perturbation | None = None
    """``model.perturbation`` (LSPR / SCR) on the dense device; None = off."""
    distills: bool = False
    """The dense arch carries distillation heads (``model.teacher.head: auxiliary``) and reads the teacher."""
    managed: ManagedIds | None = None
    """The remapper of the ``collisions: managed`` tables (on the dense device); None = none."""

    def rec_model(self, **kwargs: object) -> RecModel:
        """The unsharded whole model (a reference for tests, evaluation on one process)."""
        if self.managed is not None and self.managed.on_evict is None:
            self.managed.on_evict = RowReset(self.sparse)
        return RecModel(
            sparse=self.sparse,
            dense=self.dense,
            uses_sequences=self.uses_sequences,
            uses_timestamps=self.uses_timestamps,
            uses_domain=self.uses_domain,
            task_loss=self.task_loss,
            teacher_clip=self.teacher_clip,
            perturbation=self.perturbation,
            distills=self.distills,
            managed_ids=self.managed,
            **kwargs,  # type: ignore[arg-type]
        )


def model_inputs(cfg: JobConfig) -> ModelInputs:
    """Input shapes of the dense arch, from the feature schema and the tables."""
    tables = table_configs(cfg.embeddings, cfg.data.features)
    dims = {t.name: t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
    return ModelInputs(
        num_dense=len(cfg.data.features.dense) + teacher_features(cfg),
        pooled=pooled_layout(tables),
        num_tasks=heads(cfg),
        sequence_dims={q.name: dims[q.table] for q in cfg.data.features.sequences},
        sequence_lengths={q.name: q.max_length for q in cfg.data.features.sequences},
    )


def build_model(
    cfg: JobConfig,
    dense_device: torch.device | str = "cpu",
    sparse_device: torch.device | str = "meta",
) -> BuiltModel:
    """Build both halves with the job's seed (identical on every rank).

    Args:
        cfg: the job.
        dense_device: where the dense arch lives.
        sparse_device: ``meta`` for sharding (TorchRec materialises the shards), or a real device for an
            unsharded reference model.
    """
    torch.manual_seed(cfg.seed)
    spec = get_spec(cfg.model.arch)
    inputs = model_inputs(cfg)
    # a sequence-capable arch (Lattice) also runs without sequences: then the model takes the pooled path
    uses_sequences = spec.uses_sequences and bool(cfg.data.features.sequences)
    seq_tables, seq_layout = sequence_table_configs(cfg.embeddings, cfg.data.features) if uses_sequences else ([], None)
    sparse = SparseArch(
        table_configs(cfg.embeddings, cfg.data.features),
        device=torch.device(sparse_device),
        sequence_tables=seq_tables,
        sequence_layout=seq_layout,
        managed_tables={t.name for t in cfg.embeddings.tables if t.collisions == "managed"},
    )
    with torch.device(dense_device):
        dense = build_dense(spec, cfg.model, inputs)
        if distills(cfg):
            t = cfg.model.teacher
            hidden = t.adapter_hidden if t.adapter else 0
            own_lr = t.adapter_lr if t.adapter and t.adapter_update == "before" else 0.0
            dense = DistilledDense(dense, len(cfg.data.features.labels), t.grad_scale, hidden, own_lr)
        if cfg.model.task_weighting == "uncertainty":  # outermost: its log variances come after every output
            dense = TaskUncertainty(dense, [t.name for t in resolve_tasks(cfg)])
    return BuiltModel(
        sparse=sparse,
        dense=dense,
        inputs=inputs,
        uses_sequences=uses_sequences,
        uses_timestamps=uses_sequences and any(q.timestamps for q in cfg.data.features.sequences),
        uses_domain=spec.supports.domains and bool(cfg.data.features.domain),
        task_loss=task_loss(cfg, dense_device),
        teacher_clip=cfg.model.teacher.clip if teacher_features(cfg) else 0.0,
        perturbation=perturbation(cfg, inputs, dense_device),
        distills=distills(cfg),
        managed=build_managed_ids(cfg.embeddings, cfg.data.features, torch.device(dense_device)),
    )


def task_loss(cfg: JobConfig, device: torch.device | str = "cpu") -> TaskLoss:
    """The loss of ``model.tasks`` (one ``bce`` task per label when it is empty), on ``device``."""
    t = cfg.model.teacher
    weight = t.loss_weight if cfg.data.features.teacher else 0.0
    tasks = tasks_from_config(resolve_tasks(cfg))
    head = t.head if cfg.data.features.teacher else "serving"
    adapter = head == "auxiliary" and t.adapter
    distill = Distillation(head, t.label_scale, adapter, t.miss_target, adapter and t.adapter_update == "before")
    uncertainty = cfg.model.task_weighting == "uncertainty"
    return TaskLoss(tasks, cfg.model.task_normalization, weight, t.smoothing, distill, uncertainty).to(device)


def perturbation(cfg: JobConfig, inputs: ModelInputs, device: torch.device | str = "cpu") -> Perturbation | None:
    """``model.perturbation`` for the pooled layout ``inputs.pooled``, on ``device``; None when ``kind: none``."""
    if cfg.model.perturbation.kind == "none":
        return None
    return Perturbation(cfg.model.perturbation, inputs.pooled.feature_dims).to(device)


def distills(cfg: JobConfig) -> bool:
    """Whether the student has auxiliary distillation heads (a teacher column and ``head: auxiliary``)."""
    return bool(cfg.data.features.teacher) and cfg.model.teacher.head == "auxiliary"


def teacher_features(cfg: JobConfig) -> int:
    """Extra dense inputs the teacher's logits add (T + 1 with ``model.teacher.as_feature``, else 0)."""
    if not (cfg.data.features.teacher and cfg.model.teacher.as_feature):
        return 0
    return len(cfg.data.features.labels) + 1


def dense_flops(cfg: JobConfig) -> dict[str, FlopCount]:
    """Per-example FLOPs of the dense arch, by part (built on ``meta``: no memory is used)."""
    spec = get_spec(cfg.model.arch)
    with torch.device("meta"):
        dense = build_dense(spec, cfg.model, model_inputs(cfg))
    return spec.counter(dense).flops()


def flops_per_example(cfg: JobConfig) -> FlopCount:
    """Total per-example FLOPs of the dense arch (embedding lookups are bytes, not FLOPs)."""
    return total(dense_flops(cfg))
