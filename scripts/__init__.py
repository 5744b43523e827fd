"""Runnable tools (entry points, like train_net.py and inference.py): ``python -m scripts.<name>``."""
