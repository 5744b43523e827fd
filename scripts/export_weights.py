"""Export a checkpoint's weights for shipping: ``python -m scripts.export_weights SRC DST [--dtype float16]``.

With ``--lora ADAPTER[:SCALE]`` (repeatable) SRC is the base model and DST its full weights with the
adapters merged in (tools/lora.py), loadable as ``test_model`` without any ``lora`` setting."""
from __future__ import annotations

import argparse


def _entry(text: str) -> dict:
    """``ADAPTER[:SCALE]`` -> {path, scale}."""
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return {"path": path, "scale": float(scale)}
        except ValueError:
            pass
    return {"path": text, "scale": 1.0}


def _export(a) -> None:
    if a.lora:
        from tools import load_components
        from tools.lora import export_merged

        load_components()
        print(export_merged(a.src, [_entry(t) for t in a.lora], a.dst, a.dtype))
        return
    from utils.checkpoint import export_weights

    print(export_weights(a.src, a.dst, a.dtype))


def main(argv=None) -> int:
    from utils.cli import run_guarded

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--lora", action="append", default=[], metavar="ADAPTER[:SCALE]",
                   help="merge this LoRA adapter (a LoRA run's step_N.ema.safetensors) into SRC; repeatable")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for input errors")
    a = p.parse_args(argv)
    return run_guarded(lambda: _export(a), a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
