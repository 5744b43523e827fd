"""The shared command line of train_net.py and inference.py."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import List, Optional

EXIT_CONFIG = 2


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_net.py" if kind == "train" else "inference.py",
        description=f"NextClip {kind}: build the engine named by TASK_TYPE and run it.",
        epilog="Overrides after --cfg: a.b.c=value, +new.key=value, or VGen-style KEY VALUE pairs.",
    )
    p.add_argument("--cfg", help="experiment YAML file")
    p.add_argument("--list", action="store_true", help="print every registry and its members, then exit")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, print it, exit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for config errors")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides")
    return p


def list_registries() -> str:
    from tools import load_components
    from utils.registry import REGISTRIES

    load_components()
    out = []
    for name, reg in REGISTRIES.items():
        out.append(f"{name}  ({reg.__doc__.strip().splitlines()[0]})")
        for key, obj in reg.items():
            out.append(f"    {key:<24s} {reg.describe(obj)}")
    return "\n".join(out)


def main(kind: str, argv: Optional[List[str]] = None) -> int:
    from utils.config import ConfigError, load_config, to_yaml, validate_components
    from utils.checkpoint import CheckpointError
    from utils.registry import ENGINE, INFER_ENGINE, BuildError, RegistryError

    args = _parser(kind).parse_args(argv)
    if args.list:
        print(list_registries())
        return 0
    if not args.cfg:
        print("error: --cfg FILE is required (or --list).", file=sys.stderr)
        return EXIT_CONFIG
    registry = ENGINE if kind == "train" else INFER_ENGINE
    try:
        cfg = load_config(args.cfg, args.overrides, registry=registry)
        problems = validate_components(cfg)
        if problems:
            raise ConfigError(f"{args.cfg}: " + "\n  ".join(["invalid component config:"] + problems))
        if args.dry_run:
            print(to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}), end="")
            print(f"# dry run OK: {cfg.TASK_TYPE} from {', '.join(cfg._files)}")
            return 0
        return int(registry.get(cfg.TASK_TYPE)(cfg) or 0)
    except (ConfigError, BuildError, RegistryError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (CheckpointError, FileNotFoundError) as e:  # bad weights file or input list named by the config
        if args.debug:
            traceback.print_exc()
        print(f"input error: {e}", file=sys.stderr)
        return EXIT_CONFIG
