"""Every registry of NextClip, declared in one place.

A component registers itself with a decorator where it is defined::

    from utils.registry import MODEL

    @MODEL.register_class()
    class MyNet(nn.Module):
        '''One-line description shown by ``--list``.'''
        def __init__(self, hidden=256, depth=4): ...

and is built from a YAML dict ``{type: MyNet, hidden: 128}`` with ``MODEL.build(cfg)``.
Components take plain keyword arguments; turning a config dict into arguments
happens only in :meth:`Registry.build`.

The built-in components live in ``tools/`` and register when their modules are imported:
entry points (train_net.py, inference.py, app.py, scripts/, benchmarks/) call
``tools.load_components()`` first; this module (like all of ``utils``) never imports ``tools``.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

#: what an empty registry's error says: the built-in components register when their modules are imported
EMPTY_HINT = ("(none registered: import the components first; `tools.load_components()` registers every "
              "built-in one, as train_net.py, inference.py and app.py do)")


class RegistryError(KeyError):
    """Unknown name or duplicate registration."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class BuildError(RuntimeError):
    """A registered component raised while being constructed."""


class Registry:
    """A name -> class/function table with a documented call contract."""

    def __init__(self, name: str, doc: str):
        self.name = name
        self.__doc__ = doc
        self._obj: dict[str, Any] = {}

    # ------------------------------------------------------------------ register
    def register_class(self, name: str | None = None) -> Callable:
        """Decorator registering a class or function under ``name`` (default: its __name__)."""

        def deco(obj):
            key = name or obj.__name__
            if key in self._obj:
                old = self._obj[key]
                raise RegistryError(
                    f"{self.name}: '{key}' is registered twice: first by "
                    f"{old.__module__}.{old.__qualname__}, again by {obj.__module__}.{obj.__qualname__}. "
                    f"Rename one of them (register_class(name=...))."
                )
            self._obj[key] = obj
            return obj

        return deco

    register = register_class

    # ------------------------------------------------------------------ lookup
    def __contains__(self, key: str) -> bool:
        return key in self._obj

    def __len__(self) -> int:
        return len(self._obj)

    def keys(self):
        return sorted(self._obj)

    def items(self):
        return sorted(self._obj.items())

    def get(self, key: str):
        if key not in self._obj:
            raise RegistryError(self.unknown_message(key))
        return self._obj[key]

    def unknown_message(self, key: Any) -> str:
        close = difflib.get_close_matches(str(key), list(self._obj), n=3, cutoff=0.5)
        lower = [k for k in self._obj if k.lower() == str(key).lower() and k not in close]
        close = lower + close
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"{self.name}: no component named {key!r}.{hint} "
            f"Valid names: {', '.join(self.keys()) or EMPTY_HINT}. "
            f"Register your own with @{self.name}.register_class() and load it via custom_imports."
        )

    @staticmethod
    def describe(obj) -> str:
        doc = inspect.getdoc(obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else "(no description)"

    # ------------------------------------------------------------------ build
    def build(self, cfg: Mapping[str, Any], key_path: str = "", **extra) -> Any:
        """Build ``cfg['type']`` with the rest of ``cfg`` (plus ``extra``) as kwargs.

        ``key_path`` is the config key the dict came from (e.g. ``model``); it is
        named in every error so the user knows which YAML entry to fix.
        """
        where = f" (config key '{key_path}')" if key_path else ""
        if not isinstance(cfg, Mapping):
            raise BuildError(
                f"{self.name}{where}: expected a dict with a 'type:' entry, got {type(cfg).__name__} {cfg!r}."
            )
        if "type" not in cfg:
            raise BuildError(
                f"{self.name}{where}: the dict has no 'type:' entry (keys: {sorted(cfg)}). "
                f"Add 'type: <name>' with one of: {', '.join(self.keys())}."
            )
        kwargs = {k: _plain(v) for k, v in cfg.items() if k != "type"}
        kwargs.update(extra)
        obj = self.get(cfg["type"])
        bad = unknown_kwargs(obj, kwargs)
        if bad:
            raise BuildError(
                f"{self.name}{where}: {cfg['type']} does not take {', '.join(repr(b) for b in bad)}. "
                f"Accepted: {', '.join(accepted_kwargs(obj)) or '(none)'}."
            )
        try:
            return obj(**kwargs)
        except Exception as e:  # keep the original exception chained
            raise BuildError(
                f"{self.name}{where}: building {cfg['type']} failed: {type(e).__name__}: {e}"
            ) from e

    def __repr__(self) -> str:
        return f"Registry({self.name}, {len(self)} items)"


def _plain(v):
    """EasyDict/dict subclasses -> plain dicts so components never see config objects."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v) if isinstance(v, tuple) else [_plain(x) for x in v]
    return v


def _signature(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def accepted_kwargs(obj) -> list:
    sig = _signature(obj)
    if sig is None:
        return []
    return [n for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def unknown_kwargs(obj, kwargs: Mapping) -> list:
    """Keys of ``kwargs`` that ``obj`` cannot take (empty when it has **kwargs)."""
    sig = _signature(obj)
    if sig is None or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    ok = set(accepted_kwargs(obj))
    return sorted(k for k in kwargs if k not in ok)


ENGINE = Registry("ENGINE", """Training engines, selected by the experiment's TASK_TYPE.

Contract: ``fn(cfg: EasyDict) -> int``; runs the whole job (building every other
component from ``cfg``) and returns a process exit code (0 = success).""")

INFER_ENGINE = Registry("INFER_ENGINE", """Inference engines, selected by TASK_TYPE in inference configs.

Contract: ``fn(cfg: EasyDict) -> int``; processes every item of the test list,
records each item's status, returns 0 if all succeeded, 1 if any failed.""")

MODEL = Registry("MODEL", """Networks (``torch.nn.Module``), built with plain kwargs.

Contract: ``cls(**kwargs) -> nn.Module``; no I/O, no device calls. Next-clip models
implement ``forward(x_noisy, x_clean, clip_lens, t, cond=None, cond_mask=None) -> prediction``
shaped like ``x_noisy`` (B, C, F, H, W); ``cond`` (B, M, cond_dim) condition tokens and
``cond_mask`` (B, M) bool (False = padding, invisible to every query), both from an EMBEDDER.""")

DATASETS = Registry("DATASETS", """Datasets (map-style ``torch.utils.data.Dataset`` or iterable).

Contract: ``cls(**kwargs)``; items are dicts with at least ``video`` (C, T, H, W) in
[-1, 1] (float32) plus optional ``caption`` / ``label`` / ``meta``.""")

EMBEDDER = Registry("EMBEDDER", """Condition encoders (class labels, text, images) -> condition tokens.

Contract: ``cls(**kwargs) -> nn.Module`` with ``dim`` (token width) and ``num_tokens`` (M);
``forward(conds: list) -> (tokens, mask)``: tokens (B, M, dim) float32, mask (B, M) bool
(True = a real token, False = padding). ``None`` in ``conds`` is the null condition (a class
table's learned null row; the empty caption "" for text). ``null(B) -> (tokens, mask)``
equals ``forward([None] * B)``: the unconditional branch of classifier-free guidance and what
condition dropout trains. Engines set the model's ``cond_dim`` from ``dim``. NoCondition has
dim = num_tokens = 0 and is never called. Text embedders encode each unique caption once
per run (a cache of CPU features).""")

AUTO_ENCODER = Registry("AUTO_ENCODER", """Autoencoders between pixels and latents (VAEs, or Identity).

Contract: ``cls(**kwargs) -> nn.Module`` with ``encode(x) -> z`` and ``decode(z) -> x``
on (B, C, T, H, W) tensors (pixels in [-1, 1]); attributes ``latent_channels``,
``spatial_factor``, ``temporal_factor``, ``scale_factor``, ``shift_factor``.""")

DIFFUSION = Registry("DIFFUSION", """Diffusion / flow objectives.

Contract: ``cls(**kwargs)``; ``training_losses(model, x0, clip_lens, cond=None,
cond_mask=None, generator=None) -> dict(loss=scalar, ...)`` and ``velocity``/``sample`` helpers used
by the rollout; samplers themselves are plain functions.""")

PRETRAIN = Registry("PRETRAIN", """Weight loaders applied to a built model.

Contract: ``fn(model: nn.Module, **kwargs) -> report dict``; loads weights in place
(safetensors, or ``torch.load(weights_only=True)``) and reports missing /
unexpected / mis-shaped keys; strict unless told otherwise.""")

BACKEND = Registry("BACKEND", """Compute backends (cpu, cuda, npu, auto).

Contract: ``cls(**kwargs)`` exposing ``device``, ``dist_backend``, ``autocast()``,
``synchronize()``, ``memory_stats()``, ``seed_everything(seed)`` and
``attention_kernel() -> (impl_name, dense_attention_fn)``.""")

VISUAL = Registry("VISUAL", """Training-time visualisation hooks.

Contract: ``cls(**kwargs)`` with ``__call__(engine_state: dict) -> list[str]`` (paths
written); called by training engines every ``viz_interval`` steps on rank 0.""")

REGISTRIES = {r.name: r for r in (ENGINE, INFER_ENGINE, MODEL, DATASETS, EMBEDDER, AUTO_ENCODER,
                                  DIFFUSION, PRETRAIN, BACKEND, VISUAL)}
