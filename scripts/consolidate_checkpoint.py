"""Consolidate a sharded (FSDP / DCP) checkpoint into one safetensors file for inference:
``python -m scripts.consolidate_checkpoint SRC DST [--part ema|model|embedder] [--dtype float16]``.

SRC is a checkpoint of ``<run>/checkpoints`` (``step_N``, ``step_N.state.pt`` or ``step_N.dcp``);
DST loads as ``test_model`` in inference.py (the run's config is in its metadata)."""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from utils.checkpoint import consolidate_checkpoint
    from utils.cli import run_guarded

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part", default="ema", choices=["ema", "model", "embedder"])
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="store floating tensors as this dtype (default: as trained)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for input errors")
    a = p.parse_args(argv)
    return run_guarded(lambda: print(consolidate_checkpoint(a.src, a.dst, a.part, a.dtype)), a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
