"""Latent caches: pre-encoded latents (safetensors shards + manifest.json), written by
:func:`encode_dataset` (``python -m scripts.encode_latents --cfg X.yaml``) and read back by DATASETS
``LatentCache``.

Layout of a cache directory: ``shard_00000.safetensors`` ... (one tensor per item, per-item
caption / label / meta as JSON in the shard metadata) and ``manifest.json`` (written last,
atomically) with the fingerprint of the autoencoder and preprocessing config. A directory without
a manifest is an unfinished cache and is refused. With a text embedder in the config (one whose
features depend only on the caption, ``precomputable``), ``text_features.safetensors`` also holds
the features of every unique caption (``tokens`` (N, M, dim), ``mask`` (N, M), captions in the
metadata) and the embedder config is part of the fingerprint: training with that cache uses them
instead of encoding. Per-frame conditions of an item (``actions``: one action per frame) are stored
with its metadata and read back as a long tensor, so an action-conditioned model trains from a cache."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from utils.io import as_os_error, atomic_path
from utils.registry import DATASETS

MANIFEST = "manifest.json"
TEXT_FEATURES = "text_features.safetensors"  # pre-extracted caption features (save_text_features)
FRAME_KEYS = ("actions",)  # per-frame conditions read back with an item (long tensors, one entry per frame)


class CacheMismatchError(ValueError):
    """A latent cache was made with a different autoencoder or preprocessing config."""


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
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

    def __init__(self, cache_dir: str, expect_fingerprint: Mapping | None = None):
        path = os.path.join(cache_dir, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{cache_dir!r} has no {MANIFEST}: not a latent cache, or encoding did not finish. "
                f"Create it with `python -m scripts.encode_latents --cfg <config>`.")
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
                    "\nRe-encode with the current config (python -m scripts.encode_latents) or point to a "
                    "matching cache.")
        self._where = []  # global index -> (shard number, key)
        for s, shard in enumerate(self.manifest["shards"]):
            self._where += [(s, k) for k in shard["keys"]]
        self._items = None
        self._handles: dict[int, Any] = {}

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
                    **({"label": meta["label"]} if "label" in meta else {}),
                    **{k: torch.tensor(meta[k], dtype=torch.long) for k in FRAME_KEYS if k in meta})


# ---------------------------------------------------------------------------- writing a cache
AE_ATTRS = ("latent_channels", "spatial_factor", "temporal_factor", "causal", "scale_factor", "shift_factor")


def autoencoder_fingerprint(autoencoder) -> dict:
    """Class name + the contract attributes of an autoencoder."""
    fp = {"class": type(autoencoder).__name__}
    for a in AE_ATTRS:
        if hasattr(autoencoder, a):
            v = getattr(autoencoder, a)
            fp[a] = list(v) if isinstance(v, tuple) else v
    return fp


def fingerprint_hash(fp: Mapping) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@contextlib.contextmanager
def _named_write_error(path: str) -> Iterator[str]:
    """Yield ``path``; a failed write (the safetensors writer's own error type too) becomes one OSError
    naming it, so a full disk is reported as such."""
    try:
        yield path
    except Exception as e:
        err = as_os_error(e)
        if err is None or (isinstance(e, OSError) and e.filename):
            raise
        raise OSError(err.errno, err.strerror, path) from e


@torch.no_grad()
def encode_dataset(dataset, autoencoder, out_dir: str, shard_size: int = 256,
                   fingerprint: Mapping | None = None, device="cpu", progress: bool = True,
                   text_embedder=None) -> dict:
    """Encode every item's ``video`` with ``autoencoder.encode`` into safetensors shards.

    ``fingerprint`` should describe the autoencoder config and the preprocessing
    (resolution, num_frames, stride, ...); the autoencoder's contract attributes are
    added under ``autoencoder_attrs``. Items that a dataset substitutes for bad ones
    (same ``meta['index']`` seen twice) are stored once. With ``text_embedder`` the features
    of every unique caption are stored too (:data:`TEXT_FEATURES`). Returns the manifest.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))  # invalidate while rewriting
    fp = json.loads(json.dumps(dict(fingerprint or {}), default=str))
    fp["autoencoder_attrs"] = autoencoder_fingerprint(autoencoder)
    autoencoder.eval()
    shards, tensors, metas, done, captions = [], {}, {}, set(), {}

    def flush():
        if not tensors:
            return
        name = f"shard_{len(shards):05d}.safetensors"
        with _named_write_error(os.path.join(out_dir, name)) as path, atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"items": json.dumps(metas, ensure_ascii=False)})
        shards.append({"file": name, "keys": list(tensors)})
        tensors.clear()
        metas.clear()

    t0 = time.time()
    for i in tqdm(range(len(dataset)), desc="encode", disable=not progress):
        item = dataset[i]
        src = item.get("meta", {}).get("index", i)
        if src in done:
            continue
        done.add(src)
        z = autoencoder.encode(item["video"][None].to(device))[0]
        key = f"{src:08d}"
        tensors[key] = z.detach().float().cpu().contiguous()
        metas[key] = {k: _jsonable(v) for k, v in item.items() if k not in ("video", "latent")}
        captions[str(item.get("caption", ""))] = None
        if len(tensors) >= shard_size:
            flush()
    flush()
    manifest = {"fingerprint": fp, "fingerprint_hash": fingerprint_hash(fp), "num_items": len(done),
                "shards": shards, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": round(time.time() - t0, 3)}
    if text_embedder is not None:  # before the manifest: the manifest marks a finished cache
        manifest["text_features"] = save_text_features(text_embedder, list(captions), out_dir)
    with atomic_path(os.path.join(out_dir, MANIFEST)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
    return manifest


@torch.no_grad()
def save_text_features(embedder, captions: list, out_dir: str, chunk: int = 64) -> dict:
    """Features of each caption ("" included: the null condition) -> ``out_dir/TEXT_FEATURES``."""
    from safetensors.torch import save_file

    captions = list(dict.fromkeys(captions + [""]))
    toks, masks = [], []
    for i in range(0, len(captions), chunk):
        t, m = embedder(captions[i:i + chunk])
        toks.append(t.float().cpu())
        masks.append(m.bool().cpu())
    with _named_write_error(os.path.join(out_dir, TEXT_FEATURES)) as path, atomic_path(path) as tmp:
        save_file({"tokens": torch.cat(toks).contiguous(), "mask": torch.cat(masks).contiguous()}, tmp,
                  metadata={"captions": json.dumps(captions, ensure_ascii=False)})
    return {"file": TEXT_FEATURES, "num_captions": len(captions)}


def text_embedder_cfg(cfg) -> dict | None:
    """The config's embedder if its features depend only on the caption (a frozen text encoder)."""
    from utils.registry import EMBEDDER, _plain

    emb = cfg.get("embedder")
    if not emb or not getattr(EMBEDDER.get(emb.get("type")), "precomputable", False):
        return None
    return _plain(emb)


def cache_fingerprint(cfg) -> dict:
    """What a latent cache must have been made with: the autoencoder and the source dataset config,
    and the text embedder config when there is one (its caption features are in the cache)."""
    from utils.registry import _plain

    fp = {"autoencoder": _plain(cfg.auto_encoder), "data": _plain(cfg.dataset)}
    text = text_embedder_cfg(cfg)
    if text is not None:
        fp["text_embedder"] = text
    return fp
