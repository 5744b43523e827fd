"""Pre-encoded latents written by ``utils.encode_latents`` (safetensors shards + manifest.json)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional

from torch.utils.data import Dataset

from utils.registry import DATASETS

MANIFEST = "manifest.json"
TEXT_FEATURES = "text_features.safetensors"  # pre-extracted caption features (utils.encode_latents)


class CacheMismatchError(ValueError):
    """A latent cache was made with a different autoencoder or preprocessing config."""


def flatten(d: Mapping, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def fingerprint_diff(have: Mapping, want: Mapping) -> list:
    """['key: cache=X, expected=Y', ...] for every flattened key that differs."""
    a, b = flatten(have), flatten(want)
    missing = object()
    return [f"{k}: cache={a.get(k, '<absent>')!r}, expected={b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


@DATASETS.register_class()
class LatentCache(Dataset):
    """Pre-encoded latents from a cache dir; refuses caches made with another AE / preprocessing."""

    def __init__(self, cache_dir: str, expect_fingerprint: Optional[Mapping] = None):
        path = os.path.join(cache_dir, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{cache_dir!r} has no {MANIFEST}: not a latent cache, or encoding did not finish. "
                f"Create it with `python -m utils.encode_latents --cfg <config>`.")
        with open(path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.cache_dir = cache_dir
        if expect_fingerprint is not None:
            want = json.loads(json.dumps(expect_fingerprint, default=str))
            have = {k: v for k, v in self.manifest["fingerprint"].items()
                    if k not in ("autoencoder_attrs", "text_embedder") or k in want}  # extras a run may not use
            diff = fingerprint_diff(have, want)
            if diff:
                raise CacheMismatchError(
                    f"latent cache {cache_dir!r} was made with a different autoencoder/preprocessing/"
                    f"text encoder config. Differences:\n  " + "\n  ".join(diff) +
                    "\nRe-encode with the current config (utils.encode_latents) or point to a matching cache.")
        self._where = []  # global index -> (shard number, key)
        for s, shard in enumerate(self.manifest["shards"]):
            self._where += [(s, k) for k in shard["keys"]]
        self._items = None
        self._handles: Dict[int, Any] = {}

    def __getstate__(self):  # DataLoader workers reopen shards lazily
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def text_features(self):
        """(captions, tokens (N, M, dim), mask (N, M)) stored with the cache, or None."""
        entry = self.manifest.get("text_features")
        if not entry:
            return None
        from safetensors import safe_open

        with safe_open(os.path.join(self.cache_dir, entry["file"]), framework="pt") as f:
            captions = json.loads(f.metadata()["captions"])
            return captions, f.get_tensor("tokens"), f.get_tensor("mask")

    def __len__(self) -> int:
        return len(self._where)

    def _shard(self, s: int):
        if s not in self._handles:
            from safetensors import safe_open

            if len(self._handles) >= 4:  # keep a few memory-mapped shards open
                self._handles.pop(next(iter(self._handles)))
            f = safe_open(os.path.join(self.cache_dir, self.manifest["shards"][s]["file"]), framework="pt")
            self._handles[s] = (f, json.loads(f.metadata()["items"]))
        return self._handles[s]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for LatentCache of length {len(self)}")
        s, key = self._where[index]
        f, items = self._shard(s)
        meta = items[key]
        return dict(latent=f.get_tensor(key), caption=meta.get("caption", ""), meta=meta.get("meta", {}),
                    **({"label": meta["label"]} if "label" in meta else {}))
