"""One config path: YAML (+ ``_BASE`` inheritance) -> engine defaults -> command-line overrides.

* ``_BASE: relative/path.yaml`` (or a list) is loaded first, recursively, relative to the
  file that names it; dicts deep-merge, and ``_delete_: true`` inside a dict replaces the
  inherited dict instead of merging into it.
* Overrides: ``a.b.c=value``, ``+new.key=value`` (adds a key), or VGen-style trailing
  ``KEY VALUE`` pairs. Values parse as YAML scalars. Unknown keys and wrong types are errors.
* ``custom_imports: [pkg.module, path/to/file.py]`` is imported before anything is built.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml
from easydict import EasyDict

#: top-level keys holding one component dict (or a list of them) and their registry name
COMPONENT_KEYS = {
    "backend": "BACKEND",
    "model": "MODEL",
    "diffusion": "DIFFUSION",
    "auto_encoder": "AUTO_ENCODER",
    "embedder": "EMBEDDER",
    "dataset": "DATASETS",
    "pretrain": "PRETRAIN",
    "visual": "VISUAL",
}
#: the components an engine builds when the experiment does not name them
DEFAULT_COMPONENTS = {
    "backend": {"type": "auto", "precision": "bf16", "attention": "auto"},
    "model": {"type": "NextClipTransformer"},
    "diffusion": {"type": "RectifiedFlow"},
    "auto_encoder": {"type": "Identity"},
    "embedder": {"type": "NoCondition"},
    "pretrain": None,
}
#: keys every experiment may carry, whatever its engine
COMMON_KEYS = {"TASK_TYPE", "name", "custom_imports", "_BASE"} | set(COMPONENT_KEYS)


class ConfigError(ValueError):
    """A problem in the user's config or overrides; printed as one message, exit code 2."""


# ---------------------------------------------------------------------------- YAML
def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist. Check the path given to --cfg or _BASE.")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, found {type(data).__name__}.")
    return data


def deep_merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """Merge ``new`` into a copy of ``base``; ``_delete_: true`` in ``new`` replaces instead."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict):
            v = dict(v)
            replace = v.pop("_delete_", False)
            if not replace and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = deep_merge({}, v)  # strips nested _delete_ markers
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml_tree(path: os.PathLike, _chain: Sequence[Path] = ()) -> tuple:
    """Load ``path`` with its ``_BASE`` chain. Returns (merged dict, list of files read)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"_BASE inheritance loops: {cycle}. Remove one of the _BASE entries.")
    data = _read_yaml(path)
    bases = data.pop("_BASE", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _BASE must be a path or a list of paths relative to this file, found {bases!r}.")
    merged: Dict[str, Any] = {}
    files: List[Path] = []
    for b in bases:
        sub, sub_files = load_yaml_tree(path.parent / b, (*_chain, path))
        merged = deep_merge(merged, sub)
        files += sub_files
    merged = deep_merge(merged, data)
    return merged, files + [path]


# ---------------------------------------------------------------------------- overrides
def parse_scalar(text: str) -> Any:
    """Parse a command-line value the way YAML would (``5e-5`` -> float, ``[1,2]`` -> list)."""
    try:
        val = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "5e-5" as a string; treat float-looking strings as floats
    if isinstance(val, str):
        try:
            return float(val) if any(c in val for c in ".eE") and not val.isalpha() else val
        except ValueError:
            return val
    return val


def split_overrides(tokens: Sequence[str]) -> List[tuple]:
    """``['a.b=1', 'lr', '5e-5', '+x=2']`` -> ``[('a.b', '1', False), ('lr', '5e-5', False), ('x', '2', True)]``."""
    out, i = [], 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        add = tok.startswith("+")
        body = tok[1:] if add else tok
        if "=" in body:
            key, val = body.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(
                    f"override {tok!r} has no value. Use 'key=value' or a 'KEY VALUE' pair "
                    f"(e.g. 'test_model ckpt.safetensors')."
                )
            key, val = body, tokens[i + 1]
            i += 2
        if not key or key.startswith("-"):
            raise ConfigError(f"cannot read override {tok!r}: expected key=value, +key=value or KEY VALUE.")
        out.append((key, val, add))
    return out


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _coerce(key: str, old: Any, raw: str, new: Any, files: str) -> Any:
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int):
        return new
    elif isinstance(old, str) and not isinstance(new, (list, dict)):
        return new if isinstance(new, str) else raw  # "123" stays a string where a string is expected
    elif isinstance(old, (list, tuple)) and isinstance(new, list):
        return new
    elif isinstance(old, dict) and isinstance(new, dict):
        return deep_merge(old, new)
    raise ConfigError(
        f"override {key}={raw!r}: expected {_type_name(old)} (current value {old!r} from {files}), "
        f"got {_type_name(new)} {new!r}. Fix the value or its quoting."
    )


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[tuple], files: str) -> Dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    for key, raw, add in overrides:
        parts = key.split(".")
        node = cfg
        for depth, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                if add and p not in node:
                    node[p] = {}
                else:
                    where = ".".join(parts[: depth + 1])
                    raise ConfigError(_unknown_key_msg(key, where, node, files, add))
            node = node[p]
        leaf = parts[-1]
        new = parse_scalar(raw)
        if leaf not in node:
            if not add:
                raise ConfigError(_unknown_key_msg(key, key, node, files, add))
            node[leaf] = new
        else:
            node[leaf] = _coerce(key, node[leaf], raw, new, files)
    return cfg


def _unknown_key_msg(key: str, where: str, node: Dict[str, Any], files: str, add: bool) -> str:
    import difflib

    last = where.split(".")[-1]
    close = difflib.get_close_matches(last, [str(k) for k in node], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"override '{key}': there is no key '{where}' in the config (searched {files}).{hint} "
        f"Prefix with '+' ('+{key}=...') to add a new key on purpose."
    )


# ---------------------------------------------------------------------------- imports
def import_custom(paths: Optional[Sequence[str]], cfg_dir: Optional[Path] = None) -> None:
    """Import user modules named by ``custom_imports`` (dotted names or .py files)."""
    if not paths:
        return
    if isinstance(paths, str):
        paths = [paths]
    for entry in paths:
        if entry.endswith(".py"):
            candidates = [Path(entry)] + ([cfg_dir / entry] if cfg_dir else [])
            file = next((c for c in candidates if c.is_file()), None)
            if file is None:
                raise ConfigError(
                    f"custom_imports: file {entry!r} not found (looked in {', '.join(str(c.resolve()) for c in candidates)})."
                )
            mod_name = "nextclip_custom_" + file.stem
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise ConfigError(f"custom_imports: importing {file} failed: {type(e).__name__}: {e}") from e
        else:
            try:
                importlib.import_module(entry)
            except ImportError as e:
                raise ConfigError(
                    f"custom_imports: cannot import module {entry!r}: {e}. Give a dotted module name "
                    f"importable from the working directory, or a path ending in .py."
                ) from e


# ---------------------------------------------------------------------------- top level
def load_config(path: os.PathLike, overrides: Sequence[str] = (), registry=None) -> EasyDict:
    """Load an experiment: YAML chain, engine defaults (``engine.defaults``), overrides.

    ``registry`` is ENGINE or INFER_ENGINE; the engine named by TASK_TYPE contributes its
    default settings so that every key the engine reads exists and is type-checked.
    """
    from tools import load_components

    load_components()
    data, files = load_yaml_tree(path)
    files_str = ", ".join(str(f) for f in files)
    import_custom(data.get("custom_imports"), Path(path).resolve().parent)
    parsed = split_overrides(overrides)
    # TASK_TYPE may itself be overridden; find it first
    task = next((parse_scalar(v) for k, v, _ in parsed if k == "TASK_TYPE"), data.get("TASK_TYPE"))
    defaults: Dict[str, Any] = {}
    if registry is not None:
        if task is None:
            raise ConfigError(
                f"{files_str}: no TASK_TYPE. Set TASK_TYPE to one of: {', '.join(registry.keys())}."
            )
        if task not in registry:
            raise ConfigError(f"{files_str}: TASK_TYPE: {registry.unknown_message(task)}")
        defaults = copy.deepcopy(getattr(registry.get(task), "defaults", {}))
        unknown = sorted(k for k in data if k not in defaults and k not in COMMON_KEYS)
        if unknown:
            raise ConfigError(
                f"{files_str}: unknown top-level key(s) {', '.join(unknown)} for TASK_TYPE {task}. "
                f"Known keys: {', '.join(sorted(set(defaults) | COMMON_KEYS - {'_BASE'}))}."
            )
    for key, default in defaults.items():  # engine settings that are dicts: their keys are fixed too
        if isinstance(default, dict) and default and key not in COMPONENT_KEYS and isinstance(data.get(key), dict):
            extra = sorted(set(data[key]) - set(default))
            if extra:
                raise ConfigError(f"{files_str}: {key} has unknown key(s) {', '.join(extra)}; "
                                  f"known: {', '.join(default)}.")
    merged = deep_merge(defaults, data)
    merged = apply_overrides(merged, parsed, files_str)
    merged.setdefault("name", Path(path).stem)
    merged["_files"] = [str(f) for f in files]
    return EasyDict(merged)


def validate_components(cfg: Dict[str, Any]) -> List[str]:
    """Check every component ``type:`` and kwarg; returns a list of problems (empty = fine)."""
    from utils.registry import REGISTRIES, unknown_kwargs, accepted_kwargs

    problems = []
    for key, reg_name in COMPONENT_KEYS.items():
        val = cfg.get(key)
        if val is None:
            continue
        items = val if isinstance(val, list) else [val]
        reg = REGISTRIES[reg_name]
        for i, item in enumerate(items):
            kp = f"{key}[{i}]" if isinstance(val, list) else key
            if not isinstance(item, dict) or "type" not in item:
                problems.append(f"{kp}: expected a dict with 'type:' (one of {', '.join(reg.keys())}), found {item!r}")
                continue
            if item["type"] is None:
                problems.append(f"{kp}.type is empty: YAML reads Null, null and ~ as nothing; "
                                f"write one of {', '.join(reg.keys())} (quote names that YAML would convert)")
                continue
            if item["type"] not in reg:
                problems.append(f"{kp}.type: {reg.unknown_message(item['type'])}")
                continue
            obj = reg.get(item["type"])
            bad = unknown_kwargs(obj, {k: v for k, v in item.items() if k != "type"})
            if bad:
                problems.append(
                    f"{kp}: {item['type']} does not take {', '.join(bad)}; accepted: {', '.join(accepted_kwargs(obj))}"
                )
    return problems


def to_yaml(cfg: Dict[str, Any]) -> str:
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump(plain(cfg), sort_keys=False, allow_unicode=True)


def run_dir(cfg: Dict[str, Any]) -> Path:
    """``<log_dir>/<name>``, the folder of one experiment's outputs."""
    return Path(cfg.get("log_dir", "workspace")) / str(cfg.get("name", "experiment"))
