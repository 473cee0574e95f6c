"""Config trees as plain dicts and YAML, with type-checked loading and dotted overrides (`lm.d_model=256`).

Unknown keys and values of the wrong type raise `ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sam.config.presets import preset
from sam.config.schema import ConfigError, ExperimentConfig

# --------------------------------------------------------------------------------------------
# Dict / YAML conversion with type checking


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (JSON/YAML-ready)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to annotation `tp`, raising ConfigError naming `key` on mismatch."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for sub in typing.get_args(tp):
            try:
                return _coerce(value, sub, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.lstrip("-").isdigit()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s}; valid keys under '{prefix or '.'}': {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with ``dotted.key=value`` overrides applied (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.split(".")
        obj: Any = cfg
        for i, part in enumerate(parts[:-1]):
            obj = _child(obj, part, ".".join(parts[: i + 1]))
        last = parts[-1]
        if isinstance(obj, list):
            idx = _index(obj, last, key)
            obj[idx] = _coerce(value, type(obj[idx]), key) if dataclasses.is_dataclass(obj[idx]) else value
        elif dataclasses.is_dataclass(obj):
            hints = typing.get_type_hints(type(obj))
            if last not in hints:
                raise ConfigError(f"unknown config key {key}; valid keys: {', '.join(sorted(hints))}")
            setattr(obj, last, _coerce(value, hints[last], key))
        else:
            raise ConfigError(f"{key}: cannot set a field inside {type(obj).__name__}")
    return cfg


def _index(seq: list, part: str, key: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(seq) <= int(part) < len(seq):
        raise ConfigError(f"{key}: {part!r} is not an index into a list of {len(seq)}")
    return int(part)


def _child(obj: Any, part: str, key: str) -> Any:
    if isinstance(obj, list):
        return obj[_index(obj, part, key)]
    if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
        return getattr(obj, part)
    raise ConfigError(f"unknown config key {key}")


def load_yaml(path: str | Path, cls: type = ExperimentConfig) -> Any:
    """Load a YAML file into `cls`. A top-level ``preset: NAME`` starts from that preset."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if cls is ExperimentConfig and "preset" in data:
        base = to_dict(preset(str(data["preset"]), str(data.pop("lm_size", "small"))))
        data = _deep_merge(base, data)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
