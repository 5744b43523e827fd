"""Model weights from the local Hugging Face / ModelScope caches, never the network.

One lookup for every component that accepts a hub repo id (``AutoencoderKL.path``,
``VideoGPTCheckpoint.path``): the Hugging Face cache through ``snapshot_download(...,
local_files_only=True)`` (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else huggingface_hub's
default), then the ModelScope cache folders (``MODELSCOPE_CACHE``, default
~/.cache/modelscope/hub; the new ``models/<owner>/<name>`` and old ``<owner>/<name>``
layouts). ModelScope's own ``snapshot_download`` is not called: without network it retries
for ~20 s before failing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SOURCES = ("auto", "huggingface", "modelscope")


def is_repo_id(s: str) -> bool:
    """``owner/name`` (not a relative path such as ./x/y or ~/x)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", str(s)))


def hf_cache_dir() -> str | None:
    """The Hugging Face hub cache named by the environment now (None: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def modelscope_cache_dirs(repo_id: str) -> list[Path]:
    """The folders ModelScope may keep ``repo_id`` in (new layout, old layout, escaped dots)."""
    root = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub")
    owner, name = repo_id.split("/")
    return [root / "models" / owner / name, root / owner / name, root / "models" / owner / name.replace(".", "___")]


def cached_snapshot(repo_id: str, source: str = "auto",
                    revision: str | None = None) -> tuple[Path | None, list[str]]:
    """(the cached snapshot folder of ``repo_id`` or None, the caches searched, for messages)."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; use one of {SOURCES}")
    tried: list[str] = []
    if source in ("auto", "huggingface"):
        cache = hf_cache_dir()
        tried.append(f"Hugging Face cache {cache or '~/.cache/huggingface/hub'}")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)), tried
        except Exception:  # not installed, or not cached (LocalEntryNotFoundError and friends)
            pass
    if source in ("auto", "modelscope"):
        dirs = modelscope_cache_dirs(repo_id)
        tried.append(f"ModelScope cache {dirs[0].parents[2]}")
        hit = next((d for d in dirs if d.is_dir()), None)
        if hit is not None:
            return hit, tried
    return None, tried
