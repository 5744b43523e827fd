"""Consolidate a sharded (FSDP / DCP) checkpoint into one safetensors file for inference:
``python -m scripts.consolidate_checkpoint SRC DST [--part ema|model|embedder] [--dtype float16]``.

SRC is a checkpoint of ``<run>/checkpoints`` (``step_N``, ``step_N.state.pt`` or ``step_N.dcp``);
DST loads as ``test_model`` in inference.py (the run's config is in its metadata)."""
import argparse
import sys

from utils.checkpoint import CheckpointError, consolidate_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part", default="ema", choices=["ema", "model", "embedder"])
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="store floating tensors as this dtype (default: as trained)")
    a = p.parse_args(argv)
    try:
        print(consolidate_checkpoint(a.src, a.dst, a.part, a.dtype))
    except CheckpointError as e:
        print(f"input error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
