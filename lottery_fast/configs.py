"""Build typed config dataclasses from plain mappings (TOML/YAML files, ``--set`` overrides).

One function for every config class, so the CLI, config files and tests share one validation path:
unknown keys are errors that list the valid ones, nested dataclasses and tuples are rebuilt.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")


def unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(tp: Any, value: Any, where: str) -> Any:
    tp = unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return build(tp, value, where)
    if dataclasses.is_dataclass(tp) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected a table of {tp.__name__} options, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (tuple, Tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected a list of {len(args)} items, got {value!r}")
        if args:
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin in (tuple, Tuple) and not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    if origin in (dict, Dict) and not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a table, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: Type[T], values: Mapping[str, Any], where: str = "") -> T:
    """``cls(**values)`` with nested dataclasses/tuples rebuilt and unknown keys rejected by name."""
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = canonical_names(values, where, section=True)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def check_top_level(values: Any, sections: Sequence[str], keys: Sequence[str] = (), where: str = "config") -> None:
    """The top level of one config source (a file, a ``--set``): ``sections`` hold tables of
    options, ``keys`` plain values. Anything else is an error naming it and listing the valid ones,
    so that a misspelt section (``[impp]``) cannot leave the defaults silently in place."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a table of sections, got {values!r}")
    valid = [*keys, *(f"[{s}]" for s in sections)]
    for key, value in values.items():
        if key in sections:
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{where}: {key} is a section of options (set one, e.g. {key}.<option>=VALUE), "
                                 f"not a value: got {value!r}")
        elif key in keys:
            if isinstance(value, Mapping):
                raise ValueError(f"{where}: {key} takes a value, not a table of options")
        else:
            what = "section" if isinstance(value, Mapping) else "key"
            raise ValueError(f"{where}: unknown {what} {key!r}; valid: {', '.join(valid)}")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge: ``override`` wins; nested mappings are merged, not replaced."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_assignment(text: str) -> Dict[str, Any]:
    """``"ppo.network.hidden=[32,32]"`` -> ``{"ppo": {"network": {"hidden": [32, 32]}}}``."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE (e.g. ppo.total_steps=100000)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"--set {text!r}: empty key")
    value = _parse_value(raw.strip())
    for p in reversed(parts):
        value = {p: value}
    return value  # type: ignore[return-value]


def _parse_value(raw: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError):
            pass
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return raw


def load_file(path: str | Path) -> Dict[str, Any]:
    """A TOML (.toml) or YAML (.yaml/.yml) config file as a dict; clear errors for anything else."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            import tomllib  # type: ignore[import-not-found]
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p}: invalid TOML: {e}") from None
    elif p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise ValueError(f"config file {p}: YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p}: invalid YAML: {e}") from None
    else:
        raise ValueError(f"config file {p}: unknown format {p.suffix!r} (use .toml, .yaml or .yml)")
    if not isinstance(data, dict):
        raise ValueError(f"config file {p}: expected a table/mapping at the top level")
    return data


# -- CleanRL's names ---------------------------------------------------------------------------------
#: CleanRL's option names and ours: either is accepted in config files, ``--set`` and flags
SECTION_ALIASES = {"learning_rate": "lr", "total_timesteps": "total_steps"}
TOP_LEVEL_ALIASES = {"env_id": "env"}


def canonical_names(values: Mapping[str, Any], where: str = "config", section: bool = False) -> Dict[str, Any]:
    """``values`` (one config source: a file, a ``--set``) with CleanRL's names replaced by ours:
    ``env_id`` at the top level, ``learning_rate`` and ``total_timesteps`` in any section. Giving
    both names of one option in one table is an error. ``section``: ``values`` is one section's table."""

    def rename(table: Mapping[str, Any], aliases: Mapping[str, str], path: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, value in table.items():
            name = aliases.get(key, key)
            if name in out or (name != key and name in table):
                raise ValueError(f"{where}: {path}{key} and {path}{name} are one option; give one of them")
            out[name] = rename(value, SECTION_ALIASES, f"{path}{key}.") if isinstance(value, Mapping) else value
        return out

    if not isinstance(values, Mapping):
        return values  # type: ignore[return-value]
    return rename(values, SECTION_ALIASES if section else TOP_LEVEL_ALIASES, "")


# -- flags generated from config dataclasses -----------------------------------------------------------
_SCALARS = (int, float, str, bool)


def field_help(cls: type) -> Dict[str, str]:
    """Each field's comment in ``cls``'s source (``#:`` lines above it, or a trailing ``# ...``)."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    docs: Dict[str, str] = {}
    pending: list = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:", text)
        if m and m.group(1) in names and m.group(1) not in docs:
            trailing = text.split("  # ", 1)[1].strip() if "  # " in text else ""
            docs[m.group(1)] = " ".join(pending) or trailing
        pending = []
    return docs


def _flag_kind(hint: Any) -> str:
    """'scalar', 'list' (a tuple of scalars) or '' (no flag: tables, mappings) for a field type."""
    tp = unwrap_optional(hint)
    if tp in _SCALARS:
        return "scalar"
    if typing.get_origin(tp) in (tuple, Tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and all(unwrap_optional(a) in _SCALARS for a in args):
            return "list"
    return ""


def parse_flag_value(text: str, kind: str) -> Any:
    """A flag's text as a value: lists are comma lists (``64,64``; an empty string is the empty list;
    ``none`` is None where the option allows it), scalars parse as ``--set`` values do."""
    if kind == "list":
        stripped = text.strip()
        if stripped.lower() in ("none", "null"):
            return None
        return [_parse_value(t.strip()) for t in stripped.split(",") if t.strip()]
    return _parse_value(text.strip())


def add_config_flags(parser: Any, section: str, cls: type, skip: Sequence[type] = ()) -> Dict[str, Tuple[str, ...]]:
    """Add ``--SECTION.FIELD`` (dashes for underscores, e.g. ``--ppo.total-steps``) for every scalar
    or list field of ``cls``, with the field's comment and default as help; nested config tables
    get ``--SECTION.TABLE.FIELD``, except tables of a class in ``skip`` (set those with ``--set``).
    CleanRL's names are extra spellings (``--ppo.learning-rate``). Returns {dest: option path}."""
    import argparse

    dests: Dict[str, Tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    reverse = {v: k for k, v in SECTION_ALIASES.items()}
    for f in dataclasses.fields(cls):
        path = (section, f.name)
        tp = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            if tp not in skip:
                nested = add_config_flags(parser, f"{section}.{f.name}", tp, skip)
                dests.update(nested)
            continue
        kind = _flag_kind(hints[f.name])
        if not kind:
            continue
        flag = f"--{section}.{f.name.replace('_', '-')}"
        spellings = [flag] + ([f"--{section}.{reverse[f.name].replace('_', '-')}"] if f.name in reverse else [])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if isinstance(default, tuple):
            default = ",".join(map(str, default)) or "empty"
        dest = "config_flag:" + ".".join(path)
        doc = docs.get(f.name, "")
        parser.add_argument(*spellings, dest=dest, metavar="A,B,..." if kind == "list" else "VALUE",
                            help=f"{doc + ' ' if doc else ''}(default {default})",
                            type=lambda text, kind=kind: parse_flag_value(text, kind), default=argparse.SUPPRESS)
        dests[dest] = tuple(f"{section}.{f.name}".split("."))
    return dests


def flag_values(args: Any, dests: Mapping[str, Tuple[str, ...]]) -> Dict[str, Any]:
    """The generated flags given on the command line as one nested option dict."""
    out: Dict[str, Any] = {}
    for dest, path in dests.items():
        if not hasattr(args, dest):  # not given (an explicit "none" is None and counts)
            continue
        tree: Any = getattr(args, dest)
        for key in reversed(path):
            tree = {key: tree}
        out = merge(out, tree)
    return out
