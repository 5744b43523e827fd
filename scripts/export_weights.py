"""Export a checkpoint's weights for shipping: ``python -m scripts.export_weights SRC DST [--dtype float16]``."""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from utils.checkpoint import export_weights
    from utils.cli import run_guarded

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--debug", action="store_true", help="show full tracebacks for input errors")
    a = p.parse_args(argv)
    return run_guarded(lambda: print(export_weights(a.src, a.dst, a.dtype)), a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
