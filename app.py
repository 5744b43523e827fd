"""Serve a web page for a model: Predict, Animate, Generate.

    python app.py --cfg configs/tiny/predict.yaml [test_model CKPT] [key=value ...]
    python app.py --cfg ... --host 0.0.0.0 --port 7860    # open to the network (opt-in)
    python app.py --cfg ... --share                       # public gradio link (opt-in)

Needs the app extra: pip install -r requirements-app.txt
"""
import os

# See train_net.py: must be set before torch is imported.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from tools import load_components
from tools.inferences.web_app import main

load_components()  # every built-in component registers itself (entry points do this, utils never imports tools)

if __name__ == "__main__":
    raise SystemExit(main())
