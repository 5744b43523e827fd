"""One config path: YAML (+ ``_BASE`` inheritance) -> engine defaults -> command-line overrides.

* ``_BASE: relative/path.yaml`` (or a list) is loaded first, recursively, relative to the
  file that names it; dicts deep-merge, and ``_delete_: true`` inside a dict replaces the
  inherited dict instead of merging into it.
* Overrides: ``a.b.c=value``, ``+new.key=value`` (adds a key), or VGen-style trailing
  ``KEY VALUE`` pairs. Values parse as YAML scalars. Unknown keys and wrong types are errors.
* Values from files and from overrides are checked against the type of the engine's default
  (an int is fine for a float; a ``null`` default takes anything). ``5e-5`` is a float in
  files too (:class:`ConfigLoader`).
* ``custom_imports: [pkg.module, path/to/file.py]`` is imported before anything is built.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
    "backend": {"type": "auto", "precision": "auto", "attention": "auto", "parallel": "auto"},
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


class InputError(ValueError):
    """A bad input that is not a config key, e.g. an empty or malformed list file.

    Printed as one line ``input error: ...``, exit code 2.
    """


# ---------------------------------------------------------------------------- YAML
class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``5e-5``, ``1e-4``, ``3E+2`` as floats.

    YAML 1.1 (PyYAML) wants a dot and a signed exponent (``5.0e-05``) and reads ``5e-5``
    as a string; YAML 1.2 and Python read it as a number. Only this float resolver is
    added: the loader builds plain Python objects exactly like ``safe_load``.
    """


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist. Check the path given to --cfg or _BASE.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=ConfigLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, found {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
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
    merged: dict[str, Any] = {}
    files: list[Path] = []
    for b in bases:
        sub, sub_files = load_yaml_tree(path.parent / b, (*_chain, path))
        merged = deep_merge(merged, sub)
        files += sub_files
    merged = deep_merge(merged, data)
    return merged, files + [path]


# ---------------------------------------------------------------------------- overrides
def parse_scalar(text: str) -> Any:
    """Parse a command-line value the way a config file would (``5e-5`` -> float, ``[1,2]`` -> list)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError:
        return text


def split_overrides(tokens: Sequence[str]) -> list[tuple]:
    """``['a.b=1', 'lr', '5e-5', '+x=2']`` -> ``[('a.b', '1', False), ('lr', '5e-5', False), ('x', '2', True)]``."""
    out, i = [], 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        add = tok.startswith("+")
        body = tok[1:] if add else tok
        if tok.startswith("-"):
            raise ConfigError(f"{tok!r} is not a flag of this command (see --help) and not an override: "
                              f"expected key=value, +key=value or KEY VALUE.")
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


def _a(v: Any) -> str:
    """'a float', 'an int', 'null'."""
    name = _type_name(v)
    return name if v is None else ("an " if name[0] in "aeiou" else "a ") + name


#: returned by :func:`_fit` when a value does not fit the expected type
_NO_FIT = object()


def _fit(ref: Any, new: Any, raw: str | None = None) -> Any:
    """``new`` as the type of ``ref``, or ``_NO_FIT``. The one type rule of files and overrides.

    ``null`` on either side fits; an int fits where a float is expected (and becomes one);
    bool only fits bool. ``raw`` is the command-line text: where a string is expected a
    scalar keeps its text (``name=123`` -> ``"123"``); a file value must be a string there.
    """
    if ref is None or new is None:
        return new
    if isinstance(ref, bool) or isinstance(new, bool):
        return new if isinstance(ref, bool) and isinstance(new, bool) else _NO_FIT
    if isinstance(ref, float) and isinstance(new, (int, float)):
        return float(new)
    if isinstance(ref, int) and isinstance(new, int):
        return new
    if isinstance(ref, str):
        if isinstance(new, str):
            return new
        return raw if raw is not None and not isinstance(new, (list, dict)) else _NO_FIT
    if isinstance(ref, (list, tuple)) and isinstance(new, list):
        return new
    if isinstance(ref, dict) and isinstance(new, dict):
        return new
    return _NO_FIT


def _lookup(tree: Any, parts: Sequence[str]) -> Any:
    """``tree[p0][p1]...`` or ``_NO_FIT`` when the path is not there."""
    for p in parts:
        if not isinstance(tree, dict) or p not in tree:
            return _NO_FIT
        tree = tree[p]
    return tree


def _origin(files: Sequence[Path], parts: Sequence[str]) -> str:
    """The last file of the ``_BASE`` chain that sets the key ``parts`` (it wins the merge)."""
    for f in reversed(files):
        if _lookup(_read_yaml(Path(f)), parts) is not _NO_FIT:
            return str(f)
    return ", ".join(str(f) for f in files)


def check_types(defaults: dict[str, Any], data: dict[str, Any], files: Sequence[Path],
                skip: Iterable[str] = (), _prefix: str = "") -> None:
    """Check the values read from ``files`` against the types of the engine ``defaults``.

    Same rule as command-line overrides (:func:`_fit`); a default of ``null`` accepts
    anything, a dict default (e.g. ``clip_sampling``) has its keys checked too. Component
    dicts are checked by :func:`validate_components` instead. Keys in ``skip`` (set on the
    command line, which replaces the file value) are not checked here. An int where a float
    is expected becomes a float in ``data``.
    """
    skip = set(skip)
    for key, ref in defaults.items():
        path = _prefix + str(key)
        if (not _prefix and key in COMPONENT_KEYS) or key not in data or path in skip:
            continue
        val = _fit(ref, data[key])
        if val is _NO_FIT:
            raise ConfigError(_file_type_msg(path, data[key], ref, _origin(files, path.split("."))))
        data[key] = val
        if isinstance(ref, dict) and isinstance(val, dict):
            check_types(ref, val, files, skip, path + ".")


def _file_type_msg(path: str, val: Any, ref: Any, origin: str) -> str:
    if isinstance(ref, str):
        how = f"quote it in the file ({path}: '{val}')"
    elif isinstance(ref, bool):
        how = "write true or false"
    elif isinstance(ref, (int, float)):
        how = f"write a number like {ref!r}"
    else:
        how = f"write {_a(ref)} like {ref!r}"
    return (f"{origin}: {path}: {val!r} is {_a(val)}, expected {_a(ref)} (the default is {ref!r}"
            f"{'; an int is fine too' if isinstance(ref, float) else ''}). Fix the value: {how}, "
            f"or override it with '{path}=...'.")


def _coerce(key: str, old: Any, raw: str, new: Any, files: str, default: Any = None) -> Any:
    """The override value ``new`` checked against the engine ``default`` (if not null), else ``old``."""
    ref = old if default is None else default
    val = _fit(ref, new, raw)
    if val is _NO_FIT:
        src = f"default {ref!r}" if default is not None else f"current value {old!r} from {files}"
        raise ConfigError(
            f"override {key}={raw!r}: expected {_type_name(ref)} ({src}), "
            f"got {_type_name(new)} {new!r}. Fix the value or its quoting."
        )
    if isinstance(val, dict) and isinstance(ref, dict):
        # a dict merges into the current one, as in a config file; `_delete_: true` replaces it
        val = deep_merge({"v": old if isinstance(old, dict) else {}}, {"v": val})["v"]
        for sub, sub_ref in ref.items():  # a dict default with fixed keys: check their types too
            if sub in val and _fit(sub_ref, val[sub]) is _NO_FIT:
                raise ConfigError(
                    f"override {key}={raw!r}: {key}.{sub} must be {_a(sub_ref)} (default {sub_ref!r}), "
                    f"got {_a(val[sub])} {val[sub]!r}. Fix the value or its quoting."
                )
            if sub in val:
                val[sub] = _fit(sub_ref, val[sub])
    return val


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[tuple], files: str,
                    defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply parsed overrides; each value is checked against ``defaults`` (else the current value)."""
    cfg = copy.deepcopy(cfg)
    for key, raw, add in overrides:
        parts = key.split(".")
        node = cfg
        for depth, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                where = ".".join(parts[: depth + 1])
                if add and node.get(p) is None:
                    node[p] = {}
                elif p in node:
                    raise ConfigError(_no_sub_keys_msg(key, where, node[p]))
                else:
                    raise ConfigError(_unknown_key_msg(key, where, node, files, raw, cfg))
            node = node[p]
        leaf = parts[-1]
        new = parse_scalar(raw)
        if leaf not in node:
            if not add:
                raise ConfigError(_unknown_key_msg(key, key, node, files, raw, cfg))
            node[leaf] = new
        else:
            default = _lookup(defaults, parts) if defaults is not None else None
            default = None if default is _NO_FIT else default
            node[leaf] = _coerce(key, node[leaf], raw, new, files, default)
    return cfg


def _no_sub_keys_msg(key: str, where: str, value: Any) -> str:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    how = f"set it as a whole ('{where}=VALUE')"
    if value is None:
        how += f" or add keys with '+{key}=...'"
    return f"override '{key}': '{where}' is {_a(value)} ({shown}), it has no sub-keys; {how}."


def _component_kwarg(key: str, cfg: dict[str, Any]) -> str | None:
    """'NextClipTransformer' when ``key`` is e.g. ``model.depth`` and ``depth`` is a kwarg of it."""
    from utils.registry import REGISTRIES, accepted_kwargs

    parts = key.split(".")
    comp = cfg.get(parts[0])
    if len(parts) != 2 or parts[0] not in COMPONENT_KEYS or not isinstance(comp, dict):
        return None
    reg = REGISTRIES[COMPONENT_KEYS[parts[0]]]
    kind = comp.get("type")
    if not isinstance(kind, str) or kind not in reg:
        return None
    return kind if parts[1] in accepted_kwargs(reg.get(kind)) else None


def _unknown_key_msg(key: str, where: str, node: dict[str, Any], files: str, raw: str = "...",
                     cfg: dict[str, Any] | None = None) -> str:
    import difflib

    kind = _component_kwarg(key, cfg) if cfg is not None and where == key else None
    if kind is not None:
        return (
            f"override '{key}': {kind} takes '{key.split('.')[-1]}', but this config does not set it "
            f"(it comes from {kind}'s own default or preset; searched {files}). "
            f"Add it with '+{key}={raw}'."
        )
    last = where.split(".")[-1]
    close = difflib.get_close_matches(last, [str(k) for k in node], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"override '{key}': there is no key '{where}' in the config (searched {files}).{hint} "
        f"Prefix with '+' ('+{key}=...') to add a new key on purpose."
    )


# ---------------------------------------------------------------------------- imports
def import_custom(paths: Sequence[str] | None, cfg_dir: Path | None = None) -> None:
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
                    f"custom_imports: file {entry!r} not found (looked in "
                    f"{', '.join(str(c.resolve()) for c in candidates)})."
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
    data, files = load_yaml_tree(path)
    files_str = ", ".join(str(f) for f in files)
    import_custom(data.get("custom_imports"), Path(path).resolve().parent)
    parsed = split_overrides(overrides)
    # TASK_TYPE may itself be overridden; find it first
    task = next((parse_scalar(v) for k, v, _ in parsed if k == "TASK_TYPE"), data.get("TASK_TYPE"))
    defaults: dict[str, Any] = {}
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
    check_types(defaults, data, files, skip=[k for k, _, _ in parsed])
    merged = deep_merge(defaults, data)
    merged = apply_overrides(merged, parsed, files_str, defaults)
    merged.setdefault("name", Path(path).stem)
    merged["_files"] = [str(f) for f in files]
    return EasyDict(merged)


def validate_components(cfg: dict[str, Any]) -> list[str]:
    """Check every component ``type:`` and kwarg; returns a list of problems (empty = fine)."""
    from utils.registry import REGISTRIES, accepted_kwargs, unknown_kwargs

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


def to_yaml(cfg: dict[str, Any]) -> str:
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump(plain(cfg), sort_keys=False, allow_unicode=True)


def run_dir(cfg: dict[str, Any]) -> Path:
    """``<log_dir>/<name>``, the folder of one experiment's outputs."""
    return Path(cfg.get("log_dir", "workspace")) / str(cfg.get("name", "experiment"))
