"""Encode an experiment's dataset once into a latent cache (read back by DATASETS LatentCache):

    python -m scripts.encode_latents --cfg configs/x.yaml [--out DIR] [--overwrite] [--debug] [overrides ...]

The cache layout and fingerprint are described in :mod:`tools.datasets.latent_cache`. The new cache
is written beside ``DIR`` and replaces it only when complete (docs/guide/reliability.md): a kill or
a full disk leaves the old cache as it was. A cache made with other settings is replaced only with
``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # before torch is imported (see train_net.py)

from tools import load_components  # noqa: E402
from tools.datasets.latent_cache import (  # noqa: E402
    MANIFEST,
    cache_fingerprint,
    encode_dataset,
    fingerprint_diff,
    text_embedder_cfg,
)


def check_replaceable(out: Path, fingerprint: dict, overwrite: bool) -> None:
    """InputError unless ``out`` is absent, empty, or a cache made with the same settings (or ``overwrite``)."""
    from utils.config import InputError

    if not out.exists() or overwrite:
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a cache directory; give a directory")
    manifest = out / MANIFEST
    if not manifest.is_file():
        if any(out.iterdir()):
            raise InputError(f"--out {out} is a non-empty directory without {MANIFEST}, not a latent cache; "
                             f"give another directory, or pass --overwrite to replace it")
        return
    try:
        have = json.loads(manifest.read_text(encoding="utf-8"))["fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{manifest} is not a readable cache manifest; pass --overwrite to replace "
                         f"the cache") from None
    want = json.loads(json.dumps(fingerprint, default=str))
    diff = fingerprint_diff({k: v for k, v in have.items() if k != "autoencoder_attrs"}, want)
    if diff:
        raise InputError(f"{out} holds a latent cache made with other settings ({'; '.join(diff[:4])}"
                         f"{'; ...' if len(diff) > 4 else ''}); pass --overwrite to replace it, or --out another "
                         f"directory")


def encode(args) -> int:
    """The body of :func:`main` (run under the guarded entry path of utils/cli.py)."""
    from utils.cli import load_checked_config
    from utils.config import ConfigError
    from utils.io import recover_replaced_dir, replace_dir
    from utils.registry import AUTO_ENCODER, DATASETS, EMBEDDER, ENGINE
    from utils.run_lock import run_lock

    cfg = load_checked_config(args.cfg, args.overrides, ENGINE)
    out = args.out or cfg.get("latent_cache")
    if not out:
        raise ConfigError("no output directory: pass --out DIR or set latent_cache: DIR in the config")
    if args.shard_size < 1:
        raise ConfigError(f"--shard-size {args.shard_size} is not allowed: give a number of items >= 1, "
                          f"e.g. --shard-size 256")
    out = Path(out)
    fp = cache_fingerprint(cfg)
    with run_lock(out, "latent encoding", lock_file=out.parent / f".{out.name}.lock"):
        for line in recover_replaced_dir(out):
            print(line)
        check_replaceable(out, fp, args.overwrite)
        dataset = DATASETS.build(dict(cfg.dataset), key_path="dataset")
        ae = AUTO_ENCODER.build(dict(cfg.auto_encoder), key_path="auto_encoder")
        text_cfg = text_embedder_cfg(cfg)
        text = EMBEDDER.build(text_cfg, key_path="embedder") if text_cfg else None
        with replace_dir(out) as new:
            m = encode_dataset(dataset, ae, str(new), shard_size=args.shard_size, fingerprint=fp,
                               text_embedder=text)
    extra = f" and the features of {m['text_features']['num_captions']} captions" if text else ""
    print(f"wrote {m['num_items']} latents in {len(m['shards'])} shards{extra} to {out}")
    return 0


def main(argv=None) -> int:
    """``python -m scripts.encode_latents --cfg X.yaml [--out DIR]``: encode the experiment's
    ``dataset`` through its ``auto_encoder`` into ``latent_cache`` (or ``--out``). Training with
    ``latent_cache: DIR`` then reads the cache and refuses it if either config changed."""
    from utils.cli import run_guarded

    ap = argparse.ArgumentParser(description="Encode an experiment's dataset into a latent cache.")
    ap.add_argument("--cfg", required=True, help="training YAML (its dataset, auto_encoder and latent_cache)")
    ap.add_argument("--out", default=None, help="cache directory (default: the config's latent_cache)")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--overwrite", action="store_true", help="replace a cache made with other settings")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks for config and input errors")
    args, args.overrides = ap.parse_known_args(argv)  # the rest: config overrides, as for train_net.py
    load_components()
    return run_guarded(lambda: encode(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
