"""Checks of the training loop's settings: trainer, optimizer rates, checkpoints, launch, stages, streaming.

Part of ``validate.collect_problems``; every message starts with the key path and says what was expected.
"""

from __future__ import annotations

from recscale.configs.schema import JobConfig


def training_problems(cfg: JobConfig) -> list[str]:
    """The problems of ``trainer``, ``optimizer``, ``metrics``, ``checkpoint`` and ``launch``."""
    return _check_training(cfg) + _check_stages(cfg) + _check_streaming(cfg)


def _check_training(cfg: JobConfig) -> list[str]:
    out = []
    t = cfg.trainer
    if t.batch_size <= 0:
        out.append(f"trainer.batch_size: expected a positive integer, got {t.batch_size}")
    if t.epochs <= 0 and t.max_steps <= 0:
        out.append("trainer.epochs: expected a positive number of epochs (or set trainer.max_steps)")
    for key in ("max_steps", "eval_every", "eval_batches"):
        if getattr(t, key) < 0:
            out.append(f"trainer.{key}: expected >= 0, got {getattr(t, key)}")
    e = t.early_stopping
    if not 0.0 < e.lr_decay <= 1.0:
        out.append(f"trainer.early_stopping.lr_decay: expected a factor in (0, 1], got {e.lr_decay}")
    if e.patience < 0 or e.min_delta < 0:
        out.append("trainer.early_stopping: patience and min_delta must be >= 0")
    full_evals = t.eval_each_epoch or (t.eval_every > 0 and t.eval_batches == 0)
    if (e.patience or e.lr_decay < 1.0 or e.restore_best) and not full_evals:
        out.append(
            "trainer.early_stopping: needs full evaluations (set trainer.eval_each_epoch: true, or "
            "trainer.eval_every with trainer.eval_batches: 0)"
        )
    if t.log_every <= 0:
        out.append(f"trainer.log_every: expected a positive integer, got {t.log_every}")
    o = cfg.optimizer
    if o.dense.lr < 0:
        out.append(f"optimizer.dense.lr: expected >= 0, got {o.dense.lr}")
    if o.sparse.lr < 0:
        out.append(f"optimizer.sparse.lr: expected >= 0, got {o.sparse.lr}")
    if len(o.dense.betas) != 2 or not all(0.0 <= b < 1.0 + 1e-12 for b in o.dense.betas):
        out.append(f"optimizer.dense.betas: expected two values in [0, 1], got {o.dense.betas}")
    if o.dense.warmup_steps < 0:
        out.append(f"optimizer.dense.warmup_steps: expected >= 0, got {o.dense.warmup_steps}")
    for key in ("profile_steps", "profile_wait_steps"):
        if getattr(cfg.metrics, key) < 0:
            out.append(f"metrics.{key}: expected >= 0, got {getattr(cfg.metrics, key)}")
    c = cfg.checkpoint
    if c.every_steps < 0:
        out.append(f"checkpoint.every_steps: expected >= 0, got {c.every_steps}")
    if c.keep_last < 1:
        out.append(f"checkpoint.keep_last: expected at least 1, got {c.keep_last}")
    if not 1 <= c.io_threads <= 64:
        out.append(f"checkpoint.io_threads: expected 1 to 64 threads per rank, got {c.io_threads}")
    if cfg.launch.nnodes < 1:
        out.append(f"launch.nnodes: expected at least 1, got {cfg.launch.nnodes}")
    if cfg.launch.nproc_per_node < 1:
        out.append(f"launch.nproc_per_node: expected at least 1, got {cfg.launch.nproc_per_node}")
    for key in ("max_restarts", "cpus_per_node", "gpus_per_node", "mem_mb_per_node"):
        if getattr(cfg.launch, key) < 0:
            out.append(f"launch.{key}: expected >= 0, got {getattr(cfg.launch, key)}")
    if not 0 <= cfg.launch.rdzv_port < 65536:
        out.append(f"launch.rdzv_port: expected a TCP port (0 = pick a free one), got {cfg.launch.rdzv_port}")
    if t.collective_timeout_s <= 0:
        out.append(f"trainer.collective_timeout_s: expected a positive number of seconds, got {t.collective_timeout_s}")
    return out


def _check_stages(cfg: JobConfig) -> list[str]:
    out = []
    total = sum(st.steps for st in cfg.trainer.stages)
    if cfg.trainer.stages and cfg.trainer.max_steps not in (0, total):
        out.append(
            f"trainer.max_steps: {cfg.trainer.max_steps} conflicts with the stages' {total} steps "
            f"(expected 0 or {total}: with stages the run lasts as long as they do)"
        )
    seen: set[str] = set()
    for i, st in enumerate(cfg.trainer.stages):
        where = f"trainer.stages[{i}] ({st.name})"
        if not st.name or st.name in seen:
            out.append(f"{where}.name: expected a unique non-empty name")
        seen.add(st.name)
        if st.steps < 1:
            out.append(f"{where}.steps: expected >= 1, got {st.steps}")
        es = cfg.trainer.early_stopping
        if st.end_on_plateau and es.patience < 1:
            out.append(
                f"{where}.end_on_plateau: needs trainer.early_stopping.patience >= 1 (the evaluations without "
                f"improvement that end the stage), got {es.patience}"
            )
        if st.start_from_best and not es.restore_best:
            out.append(f"{where}.start_from_best: needs trainer.early_stopping.restore_best: true (it keeps the best)")
        if st.start_from_best and i == 0:
            out.append(f"{where}.start_from_best: the first stage has no earlier best to start from")
        for key in (
            "backbone_lr_scale",
            "expert_lr_scale",
            "router_lr_scale",
            "sparse_lr_scale",
            "load_balance_scale",
            "z_loss_scale",
            "diversity_scale",
        ):
            if getattr(st, key) < 0:
                out.append(f"{where}.{key}: expected >= 0, got {getattr(st, key)}")
    return out


def _check_streaming(cfg: JobConfig) -> list[str]:
    s, t = cfg.trainer.streaming, cfg.trainer
    if not s.enabled:
        return []
    out = []
    if s.passes < 1:
        out.append(f"trainer.streaming.passes: expected at least 1 pass over each period, got {s.passes}")
    if t.stages:
        out.append("trainer.streaming.enabled: training stages (trainer.stages) and streaming do not go together")
    if t.early_stopping.restore_best or t.early_stopping.patience:
        out.append(
            "trainer.streaming.enabled: a streaming run carries its weights from period to period; "
            "trainer.early_stopping.restore_best and patience do not apply (expected false and 0)"
        )
    if cfg.data.source == "synthetic" and not cfg.data.synthetic.partition_by_day:
        out.append(
            "trainer.streaming.enabled: the generated data has no periods: set data.synthetic.partition_by_day: "
            "true (one subdirectory per day)"
        )
    return out
