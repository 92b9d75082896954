"""Typed job configs: the schema, YAML presets, overrides and validation (no torch here)."""

from recscale.configs.loader import (
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    list_presets,
    load_config,
)
from recscale.configs.schema import JobConfig
from recscale.configs.validate import collect_problems, validate

__all__ = [
    "ConfigError",
    "JobConfig",
    "collect_problems",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "dump_config",
    "list_presets",
    "load_config",
    "validate",
]
