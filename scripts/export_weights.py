"""Export a checkpoint's weights for shipping: ``python -m scripts.export_weights SRC DST [--dtype float16]``."""
import argparse

from utils.checkpoint import export_weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    a = p.parse_args(argv)
    print(export_weights(a.src, a.dst, a.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
