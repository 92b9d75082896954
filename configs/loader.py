"""Load a job config from a preset name or a YAML path, apply ``--set`` overrides, type-check it.

The YAML is turned into the dataclass tree of :mod:`recscale.configs.schema` by a strict converter:
an unknown key, a wrong type or a bad literal fails with the key path, what was expected and what
was found. Nothing is coerced silently except an int where a float is expected.

A YAML file may start from another one with ``extends: <preset name or path>``; the two are merged
key by key (lists are replaced, not concatenated).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from recscale.configs.schema import JobConfig
from recscale.configs.tasks import fill_task_labels

PRESET_DIR = Path(__file__).parent / "presets"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key path and what was expected."""


# --------------------------------------------------------------------------------------------------
# presets and files
# --------------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the presets shipped in ``configs/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``quickstart``) or a path to a YAML file -> the YAML file."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    hint = difflib.get_close_matches(name_or_path, list_presets(), n=1)
    also = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(
        f"{name_or_path!r} is neither a YAML file nor a preset.{also} Presets: {', '.join(list_presets())}"
    )


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, following ``extends:`` chains, into one plain dict."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"'extends' loops: {chain}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return dict(raw)
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: 'extends' must be a preset name or a path, got {base_name!r}")
    base_path = Path(base_name)
    if not base_path.is_absolute() and (path.parent / base_path).exists():
        base_path = path.parent / base_path
    base = read_yaml(resolve_config_path(str(base_path)), (*_seen, path))
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------------


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to the plain dict (values are parsed as YAML scalars/lists).

    List items are addressed by index: ``embeddings.tables.0.num_embeddings=1000``. The types are
    checked afterwards, by the same converter as the file, so an override gets the same messages.
    """
    out: dict[str, Any] = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. trainer.batch_size=4096")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
        parts = key.strip().split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, where, item)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key, item)] = value
        else:
            node[last] = value
    return out


def _list_index(node: list[Any], part: str, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {where} needs a list index in 0..{len(node) - 1}, got {part!r}")
    return int(part)


# --------------------------------------------------------------------------------------------------
# typed conversion
# --------------------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of str to {_describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return f"a {tp.__name__} section"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _found(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert plain YAML data ``value`` to type ``tp``; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `0`/`1` as ints and `on` as bool; compare by value and type
        for option in allowed:
            if value == option and type(value) is type(option):
                return value
        raise ConfigError(f"{path}: expected one of {_describe(tp)}, got {_found(value)}")
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return convert(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_found(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {_found(value)}")
        (item_tp,) = typing.get_args(tp)
        return [convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {_found(value)}")
        _, val_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {_found(k)}")
            out[k] = convert(val_tp, v, f"{path}.{k}")
        return out
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {_found(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_found(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_found(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {_found(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_found(value)}")
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a schema bug, not a user error


def _convert_dataclass(cls: type[T], value: Any, path: str) -> T:
    where = path or "the config"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping (a section), got {_found(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, item in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{sub}: unknown key{also} Keys of {where}: {', '.join(fields)}")
        kwargs[key] = convert(hints[key], item, sub)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        sub = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"{sub}: required key is missing ({_describe(hints[missing[0]])})")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------


def load_config(name_or_path: str, overrides: list[str] | None = None) -> JobConfig:
    """Preset name or YAML path (+ ``a.b=value`` overrides) -> a type-checked JobConfig."""
    raw = read_yaml(resolve_config_path(name_or_path))
    raw = apply_overrides(raw, overrides or [])
    cfg: JobConfig = convert(JobConfig, raw, "")
    return fill_task_labels(cfg)


def config_from_dict(raw: dict[str, Any]) -> JobConfig:
    """A plain dict (e.g. a run directory's config.yaml) -> JobConfig."""
    cfg: JobConfig = convert(JobConfig, raw, "")
    return fill_task_labels(cfg)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JobConfig (or any section) -> plain dict, ready for YAML or JSON."""
    out: dict[str, Any] = dataclasses.asdict(cfg)
    return out


def dump_config(cfg: JobConfig, path: Path) -> None:
    """Write the resolved config as YAML (to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (or one of its sections)."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
