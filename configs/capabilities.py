"""What each model supports, and the config keys that ask a model for more (refused before anything starts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from recscale.configs.schema import JobConfig


@dataclass(frozen=True)
class ModelCapabilities:
    """What a model supports, declared by its registry entry (``recscale.modules.registry.ModelSpec``).

    A job that asks a model for something it does not declare is refused before any process starts,
    instead of being silently ignored.
    """

    expert_parallel: bool = False
    """It has expert layers that ``sharding.ep_size > 1`` spreads over ranks."""
    sequences: bool = False
    """It reads the event sequences (``data.features.sequences``)."""
    staged_training: bool = False
    """It has expert and router parameters that ``trainer.stages`` can freeze and train apart."""
    domains: bool = False
    """It reads the domain column (``data.features.domain``; per-domain parameters): the dense arch gets
    ``domain=batch.domain`` even without event sequences."""


def _having(archs: Mapping[str, ModelCapabilities], what: str) -> str:
    names = sorted(name for name, caps in archs.items() if getattr(caps, what))
    return ", ".join(names) or "none"


def capability_problems(cfg: JobConfig, archs: Mapping[str, ModelCapabilities]) -> list[str]:
    """What ``cfg`` asks of ``model.arch`` that its declared capabilities do not cover (one line each).

    Args:
        cfg: the job.
        archs: every registered architecture's capabilities (the messages name the ones that have it).
    """
    arch = cfg.model.arch
    if arch not in archs:
        return []  # the registry reports an unknown arch
    caps, out = archs[arch], []
    if cfg.sharding.ep_size > 1 and not caps.expert_parallel:
        out.append(
            f"sharding.ep_size: {cfg.sharding.ep_size} but model.arch {arch} has no expert layers "
            f"(expert parallelism: {_having(archs, 'expert_parallel')})"
        )
    if cfg.trainer.stages and not caps.staged_training:
        out.append(
            f"trainer.stages: model.arch {arch} has no staged training (no expert or router parameters to train "
            f"apart; staged training: {_having(archs, 'staged_training')})"
        )
    if cfg.data.features.sequences and not caps.sequences:
        out.append(
            f"data.features.sequences: model.arch {arch} reads no event sequences (remove them, or use a sequence "
            f"model: {_having(archs, 'sequences')})"
        )
    if cfg.model.perturbation.kind != "none" and caps.sequences and cfg.data.features.sequences:
        out.append(
            f"model.perturbation.kind: {cfg.model.perturbation.kind} is not available for a sequence model "
            f"({arch} with data.features.sequences): its sequence inputs are not doubled; expected none"
        )
    return out
