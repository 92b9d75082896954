"""Checks of a whole job before any process starts: config values, the model's own rules."""

from __future__ import annotations

from recscale.configs import ConfigError, JobConfig, collect_problems
from recscale.modules.registry import check_model


def check_job(cfg: JobConfig, world_size: int | None, device: str | None) -> None:
    """Raise ``ConfigError`` listing every problem (key path + what was expected)."""
    problems = collect_problems(cfg, world_size, device) + check_model(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
