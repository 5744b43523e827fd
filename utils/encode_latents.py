"""Encode a dataset once into a latent cache (read back by DATASETS LatentCache).

    python -m utils.encode_latents --cfg configs/x.yaml [--out DIR]

Layout of ``out_dir``: ``shard_00000.safetensors`` ... (one tensor per item, per-item
caption / label / meta as JSON in the shard metadata) and ``manifest.json`` (written
last, atomically) with the fingerprint of the autoencoder and preprocessing config.
A directory without a manifest is an unfinished cache and is refused by LatentCache.
With a text embedder in the config (one whose features depend only on the caption,
``precomputable``), ``text_features.safetensors`` also holds the features of every unique
caption (``tokens`` (N, M, dim), ``mask`` (N, M), captions in the metadata) and the embedder
config is part of the fingerprint: training with that cache uses them instead of encoding.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Mapping, Optional

import torch

from tools.datasets.latent_cache import MANIFEST, TEXT_FEATURES
from utils.io import atomic_path

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


@torch.no_grad()
def encode_dataset(dataset, autoencoder, out_dir: str, shard_size: int = 256,
                   fingerprint: Optional[Mapping] = None, device="cpu", progress: bool = True,
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
        with atomic_path(os.path.join(out_dir, name)) as tmp:
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
    with atomic_path(os.path.join(out_dir, TEXT_FEATURES)) as tmp:
        save_file({"tokens": torch.cat(toks).contiguous(), "mask": torch.cat(masks).contiguous()}, tmp,
                  metadata={"captions": json.dumps(captions, ensure_ascii=False)})
    return {"file": TEXT_FEATURES, "num_captions": len(captions)}


def text_embedder_cfg(cfg) -> Optional[dict]:
    """The config's embedder if its features depend only on the caption (a frozen text encoder)."""
    from utils.registry import EMBEDDER, _plain

    emb = cfg.get("embedder")
    if not emb or not getattr(EMBEDDER.get(emb.get("type")), "precomputable", False):
        return None
    return _plain(emb)


def main(argv=None) -> int:
    """``python -m utils.encode_latents --cfg X.yaml [--out DIR]``: encode the experiment's
    ``dataset`` through its ``auto_encoder`` into ``latent_cache`` (or ``--out``). Training with
    ``latent_cache: DIR`` then reads the cache and refuses it if either config changed."""
    import os

    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    from utils.config import load_config
    from utils.registry import AUTO_ENCODER, DATASETS, EMBEDDER, ENGINE

    ap = argparse.ArgumentParser(description="Encode an experiment's dataset into a latent cache.")
    ap.add_argument("--cfg", required=True, help="training YAML (its dataset, auto_encoder and latent_cache)")
    ap.add_argument("--out", default=None, help="cache directory (default: the config's latent_cache)")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides, as for train_net.py")
    args = ap.parse_args(argv)
    cfg = load_config(args.cfg, args.overrides, registry=ENGINE)
    out = args.out or cfg.get("latent_cache")
    if not out:
        raise SystemExit("no output directory: pass --out DIR or set latent_cache: DIR in the config")
    data_cfg, ae_cfg = dict(cfg.dataset), dict(cfg.auto_encoder)
    dataset = DATASETS.build(data_cfg, key_path="dataset")
    ae = AUTO_ENCODER.build(ae_cfg, key_path="auto_encoder")
    text_cfg = text_embedder_cfg(cfg)
    text = EMBEDDER.build(text_cfg, key_path="embedder") if text_cfg else None
    m = encode_dataset(dataset, ae, out, shard_size=args.shard_size, fingerprint=cache_fingerprint(cfg),
                       text_embedder=text)
    extra = f" and the features of {m['text_features']['num_captions']} captions" if text else ""
    print(f"wrote {m['num_items']} latents in {len(m['shards'])} shards{extra} to {out}")
    return 0


def cache_fingerprint(cfg) -> dict:
    """What a latent cache must have been made with: the autoencoder and the source dataset config,
    and the text embedder config when there is one (its caption features are in the cache)."""
    from utils.registry import _plain

    fp = {"autoencoder": _plain(cfg.auto_encoder), "data": _plain(cfg.dataset)}
    text = text_embedder_cfg(cfg)
    if text is not None:
        fp["text_embedder"] = text
    return fp


if __name__ == "__main__":
    raise SystemExit(main())
