"""Encode an experiment's dataset once into a latent cache (read back by DATASETS LatentCache):

    python -m scripts.encode_latents --cfg configs/x.yaml [--out DIR] [overrides ...]

The cache layout and fingerprint are described in :mod:`tools.datasets.latent_cache`.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # before torch is imported (see train_net.py)

from tools.datasets.latent_cache import cache_fingerprint, encode_dataset, text_embedder_cfg  # noqa: E402
from tools import load_components  # noqa: E402


def main(argv=None) -> int:
    """``python -m scripts.encode_latents --cfg X.yaml [--out DIR]``: encode the experiment's
    ``dataset`` through its ``auto_encoder`` into ``latent_cache`` (or ``--out``). Training with
    ``latent_cache: DIR`` then reads the cache and refuses it if either config changed."""
    from utils.config import load_config
    from utils.registry import AUTO_ENCODER, DATASETS, EMBEDDER, ENGINE

    ap = argparse.ArgumentParser(description="Encode an experiment's dataset into a latent cache.")
    ap.add_argument("--cfg", required=True, help="training YAML (its dataset, auto_encoder and latent_cache)")
    ap.add_argument("--out", default=None, help="cache directory (default: the config's latent_cache)")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides, as for train_net.py")
    args = ap.parse_args(argv)
    load_components()
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


if __name__ == "__main__":
    raise SystemExit(main())
