"""Train a NextClip experiment.

    python train_net.py --cfg configs/demo/train.yaml [key=value ...] [KEY VALUE ...]
    torchrun --nproc_per_node 2 train_net.py --cfg ...      # distributed
    python train_net.py --list | --cfg X.yaml --dry-run
"""
import os

# A torch_npu without Ascend libraries breaks `import torch` unless autoloading is off;
# the NPU backend imports torch_npu explicitly instead. Must happen before torch is imported.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from utils.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main("train"))
