"""Typed dataclass trees from plain dicts: checked construction and dotted overrides.

Generic over any tree of (frozen) dataclasses; `rlx.config` applies it to the experiment
config. Unknown keys fail with the valid keys listed, wrong types with the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, converting only where it loses nothing."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    where = f"{prefix}.{key}" if prefix else key
    return ConfigError(f"unknown config key '{where}'.{hint} Valid keys"
                       f"{' in ' + prefix if prefix else ''}: {', '.join(names)}")


def build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(cls, key, prefix)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain YAML-able dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def set_dotted(root: type, tree: dict, dotted: str, value: Any) -> None:
    """Place `value` at `a.b.c`, checking every part against the schema as it goes."""
    parts = dotted.split(".")
    cls: Any = root
    node = tree
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not (dataclasses.is_dataclass(cls)):
            if cls is dict:  # free-form mapping (e.g. model.overrides.n_layers=2)
                node = node.setdefault(part, {}) if i < len(parts) - 1 else node
                if i == len(parts) - 1:
                    node[part] = value
                continue
            raise ConfigError(f"'{dotted}': '{prefix}' is a value, not a section")
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            raise _unknown_key(cls, part, prefix)
        if i == len(parts) - 1:
            node[part] = value
            return
        cls = typing.get_type_hints(cls)[part]
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. trainer.steps=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_attribute(path: str, key: str) -> Any:
    """A config value that names code, `module:attribute` -> the attribute (an estimator, a
    reward, a judge), with an error naming `key` and what went wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}={path!r}: name it as 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}={path}: cannot import {module_name!r} ({e}); is it on PYTHONPATH "
                          "(the working directory counts)?") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{key}={path}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
