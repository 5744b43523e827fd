"""NextClip components, one sub-package per registry kind.

Modules register their components when imported; :func:`load_components` imports
every module under ``tools/`` once, so every registry is complete before a config
is built. Nothing happens at ``import tools`` itself.
"""
import importlib
import pkgutil

_LOADED = False


def load_components() -> None:
    """Import every module of every sub-package (idempotent)."""
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)
    _LOADED = True
