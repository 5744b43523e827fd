"""Train a NextClip experiment.

    python train_net.py --cfg configs/tiny/train.yaml [key=value ...] [KEY VALUE ...]
    torchrun --nproc_per_node 2 train_net.py --cfg ...      # distributed
    python train_net.py --list | --cfg X.yaml --dry-run [--world-size N] [backend.parallel=fsdp]

``--dry-run`` also prints the per-rank memory plan (tools/train/memory_plan.py) for ``--world-size``
processes (default 1) of the configured parallelism, built on the meta device.
"""
import os
import sys

# A torch_npu without Ascend libraries breaks `import torch` unless autoloading is off;
# the NPU backend imports torch_npu explicitly instead. Must happen before torch is imported.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from utils.cli import main  # noqa: E402
from tools import load_components  # noqa: E402

load_components()  # every built-in component registers itself (entry points do this, utils never imports tools)


def pop_world_size(argv):
    """(world size of ``--world-size N`` / ``--world-size=N`` or None, argv without it)."""
    out, world, i = [], None, 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--world-size" and i + 1 < len(argv):
            world, i = argv[i + 1], i + 2
            continue
        if tok.startswith("--world-size="):
            world = tok.split("=", 1)[1]
        else:
            out.append(tok)
        i += 1
    if world is not None and not (world.isdigit() and int(world) >= 1):
        print(f"error: --world-size {world!r} is not allowed: give a number of processes >= 1, e.g. --world-size 8",
              file=sys.stderr)
        raise SystemExit(2)
    return (None if world is None else int(world)), out


def run(argv) -> int:
    world, argv = pop_world_size(argv)
    code = main("train", argv)
    if code != 0 or "--dry-run" not in argv:
        return code
    from utils.cli import load_checked_config, run_guarded, split_argv
    from utils.registry import ENGINE

    flags, overrides = split_argv(argv)
    cfg_path = next((f.split("=", 1)[1] if f.startswith("--cfg=") else flags[i + 1]
                     for i, f in enumerate(flags) if f.startswith("--cfg")), None)

    def plan() -> int:
        from tools.train.memory_plan import dry_run_plan

        cfg = load_checked_config(cfg_path, overrides, ENGINE)
        if cfg.get("TASK_TYPE") in ("train_next_clip", "train_video"):
            print(dry_run_plan(cfg, world or 1))
        return 0

    return run_guarded(plan, "--debug" in argv)


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
