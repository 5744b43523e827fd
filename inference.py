"""Run batch inference over a test list.

    python inference.py --cfg configs/tiny/predict.yaml [test_list_path FILE] [test_model CKPT]
    torchrun --nproc_per_node 2 inference.py --cfg ...    # items sharded across ranks
    python inference.py --list | --cfg X.yaml --dry-run
"""
import os

# See train_net.py: must be set before torch is imported.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from tools import load_components
from utils.cli import main

load_components()  # every built-in component registers itself (entry points do this, utils never imports tools)

if __name__ == "__main__":
    raise SystemExit(main("infer"))
