"""Config files: the packaged recipes, YAML files, ``key=value`` overrides and the ``--help`` text.

A run's settings are one :class:`~hrpo.config.HRPOConfig`. It comes from a YAML file or a recipe
shipped in the package (``hrpo/configs/``, :func:`recipes`), with ``key=value`` overrides from the
command line on top (each value parsed as YAML); an unknown key is an error that suggests the
closest known one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
from pathlib import Path
from typing import Any

import yaml

from hrpo.config import FIELD_RANGES, ConfigError, HRPOConfig, _fields
from hrpo.trl_compat import UNSUPPORTED, unsupported_message

RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def _unknown(key: str, where: str) -> ConfigError:
    message = unsupported_message(key)
    if message is not None:  # a TRL field hrpo refuses, with its reason
        return ConfigError(f"{message} (in {where})")
    close = difflib.get_close_matches(key, list(_fields()), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → dict, each value parsed as YAML (``1e-4``, ``false``, ``[a, b]``)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in _fields() and key not in UNSUPPORTED:
            raise _unknown(key, "the command line")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return _drop_trl_fields(out, "the command line")


def _drop_trl_fields(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` without the refused TRL fields set to what hrpo does anyway (``use_vllm: false``);
    a :class:`ConfigError` naming ``where`` for any other refused TRL field."""
    for key in [k for k in values if k in UNSUPPORTED and k not in _fields()]:
        message = unsupported_message(key, values[key])
        if message is not None:
            raise ConfigError(f"{message} (in {where})")
        del values[key]
    return values


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file; a :class:`ConfigError` naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} keys, got {type(loaded).__name__}")
    return loaded


def recipes() -> list[str]:
    """The names of the training recipes shipped in the package (``hrpo train --config NAME``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The packaged file of recipe ``name`` (``quickstart``, ``quickstart.yaml``, ``accelerate/ddp``).

    A :class:`ConfigError` listing the recipes if there is no such recipe.
    """
    text = name if isinstance(name, str) else ""
    # Not with_suffix: recipe names have dots of their own (gsm8k_qwen2.5_1.5b).
    parts = Path(text if text.endswith(".yaml") else f"{text}.yaml").parts
    path = RECIPES_DIR.joinpath(*parts)
    # Names only: nothing absolute and no '..' out of the recipes directory.
    if Path(text).is_absolute() or ".." in parts or not path.is_file():
        raise ConfigError(f"no recipe {name!r}; recipes: {', '.join(recipes())}")
    return path


def config_path(path_or_recipe: str | Path, relative_to: str | Path | None = None) -> Path:
    """The YAML file a config argument names: a path (under ``relative_to`` when relative) that
    exists, else the packaged recipe of that name; a :class:`ConfigError` when it is neither."""
    path = Path(path_or_recipe)
    if relative_to is not None:
        path = Path(relative_to) / path
    if path.is_file():
        return path
    try:
        return recipe_path(str(path_or_recipe))
    except ConfigError:
        raise ConfigError(
            f"config file {path} does not exist, and {str(path_or_recipe)!r} is no recipe "
            f"(recipes: {', '.join(recipes())})"
        ) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> HRPOConfig:
    """Config from a YAML file or packaged recipe (optional) with ``key=value`` overrides on top.

    ``path`` is a path to a YAML file or a recipe name (:func:`recipes`); an existing file wins.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = config_path(path)
        loaded = read_yaml_mapping(path)
        for key in loaded:
            if key not in _fields() and key not in UNSUPPORTED:
                raise _unknown(key, str(path))
        values.update(_drop_trl_fields(loaded, str(path)))
    values.update(parse_overrides(overrides or []))
    return HRPOConfig(**values)


def field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), for ``--help``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(HRPOConfig)))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            is_doc = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
            docs[node.target.id] = " ".join(nxt.value.value.split()) if is_doc else ""
    return docs


def describe_fields() -> str:
    """A text table of every config key: name, default, allowed values (numbers) and meaning."""
    lines = []
    docs = field_docs()
    for f in dataclasses.fields(HRPOConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        allowed = f"  (allowed: {FIELD_RANGES[f.name]})" if f.name in FIELD_RANGES else ""
        lines.append(f"  {f.name} = {default!r}{allowed}")
        if docs.get(f.name):
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines)
