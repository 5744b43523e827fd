"""The shared command line of train_net.py and inference.py."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

EXIT_CONFIG = 2
#: flags without a value; like ``--cfg FILE`` they may stand anywhere, also after the overrides
FLAGS = ("--list", "--dry-run", "--debug", "-h", "--help")


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_net.py" if kind == "train" else "inference.py",
        usage="%(prog)s [--cfg FILE] [--list] [--dry-run] [--debug] [overrides ...]",
        description=f"NextClip {kind}: build the engine named by TASK_TYPE and run it.",
        epilog="Overrides: a.b.c=value, +new.key=value, or VGen-style KEY VALUE pairs. "
               "Flags may come before or after the overrides.",
    )
    p.add_argument("--cfg", help="experiment YAML file")
    p.add_argument("--list", action="store_true", help="print every registry and its members, then exit")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, print it, exit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for config and input errors")
    return p


def split_argv(argv: List[str]) -> Tuple[List[str], List[str]]:
    """Pull the flags and ``--cfg FILE`` out of ``argv`` wherever they are: (flags, overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in FLAGS or tok.startswith("--cfg="):
            flags.append(tok)
        elif tok == "--cfg":
            flags += argv[i:i + 2]
            i += 1
        else:
            overrides.append(tok)
        i += 1
    return flags, overrides


def list_registries() -> str:
    from utils.registry import REGISTRIES

    out = []
    for name, reg in REGISTRIES.items():
        out.append(f"{name}  ({reg.__doc__.strip().splitlines()[0]})")
        for key, obj in reg.items():
            out.append(f"    {key:<24s} {obj.__module__:<40s} {reg.describe(obj)}")
    return "\n".join(out)


def validate_engine(engine, cfg) -> None:
    """Run the engine's own checks (``engine.validate(cfg)``, contract C1), if it has any."""
    check = getattr(engine, "validate", None)
    if check is not None:
        check(cfg)


def os_error_line(err: OSError) -> str:
    """``error: Permission denied: /path`` (+ a hint when the disk is full): one line, no traceback."""
    from utils.io import disk_full_hint

    where = str(err.filename) + (f" -> {err.filename2}" if getattr(err, "filename2", None) else "")
    return f"error: {err.strerror or err}: {where}{disk_full_hint(err)}"


def error_text(err: BaseException) -> str:
    """The message of ``err``. An error re-raised by a DataLoader worker carries the worker's
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last line is the message."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def fail(line: str, debug: bool) -> int:
    """Print one error line (the traceback too with ``--debug``); the config/input exit code."""
    if debug:
        traceback.print_exc()
    print(line, file=sys.stderr)
    return EXIT_CONFIG


def load_checked_config(path: str, overrides: Sequence[str], registry):
    """The merged config of ``path`` + ``overrides``, every component config checked (ConfigError)."""
    from utils.config import ConfigError, load_config, validate_components

    cfg = load_config(path, overrides, registry=registry)
    problems = validate_components(cfg)
    if problems:
        raise ConfigError(f"{path}: " + "\n  ".join(["invalid component config:"] + problems))
    return cfg


def run_guarded(body: Callable[[], int], debug: bool) -> int:
    """``body()``'s exit code, or one line per known failure: config / input errors exit 2, a dead or
    silent rank exits 1, an OSError naming a file exits 2; anything else is a bug and propagates."""
    from utils.checkpoint import CheckpointError
    from utils.config import ConfigError, InputError
    from utils.distributed import DistributedError
    from utils.registry import BuildError, RegistryError

    try:
        return int(body() or 0)
    except (ConfigError, BuildError, RegistryError) as e:
        # a component that could not be built because of its input (an empty list file, a
        # missing cache) is an input problem, not a typo in the config
        bad_input = isinstance(e.__cause__, (CheckpointError, FileNotFoundError, InputError))
        return fail(f"{'input' if bad_input else 'config'} error: {e}", debug)
    except (CheckpointError, FileNotFoundError, InputError) as e:  # bad weights file or input list named by the config
        return fail(f"input error: {error_text(e)}", debug)
    except DistributedError as e:  # another rank died or went silent: one line, not a traceback
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file or folder the run must write or read: permission, not a directory, disk full
        if not e.filename:
            raise
        return fail(os_error_line(e), debug)


def main(kind: str, argv: Optional[List[str]] = None) -> int:
    from utils.config import to_yaml
    from utils.registry import ENGINE, INFER_ENGINE

    flags, overrides = split_argv(sys.argv[1:] if argv is None else list(argv))
    args = _parser(kind).parse_args(flags)
    if args.list:
        print(list_registries())
        return 0
    if not args.cfg:
        print("error: --cfg FILE is required (or --list).", file=sys.stderr)
        return EXIT_CONFIG
    registry = ENGINE if kind == "train" else INFER_ENGINE

    def body() -> int:
        cfg = load_checked_config(args.cfg, overrides, registry)
        engine = registry.get(cfg.TASK_TYPE)
        validate_engine(engine, cfg)
        if args.dry_run:
            print(to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}), end="")
            print(f"# dry run OK: {cfg.TASK_TYPE} from {', '.join(cfg._files)}")
            return 0
        return engine(cfg)

    return run_guarded(body, args.debug)
