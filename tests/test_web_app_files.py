"""The web page serves only its own outputs, its uploads and the demo videos: weights files (the demo
weights beside the demo videos, the model's test_model) and the run's config.yaml / log.txt are refused.
A text file sent as the image to Animate through the API gets the page's one-line error."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from utils.checkpoint import save_weights
from utils.registry import MODEL
from ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_CFG = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("gradio")
    tmp = tmp_path_factory.mktemp("web")
    weights = tmp / "model.safetensors"
    save_weights(weights, MODEL.build(MODEL_CFG).state_dict())
    cfg = tmp / "page.yaml"
    cfg.write_text(f"TASK_TYPE: predict_next_clip\nmodel: {json.dumps(MODEL_CFG)}\n"
                   f"backend: {{type: cpu, precision: fp32, attention: sdpa}}\ntest_model: {weights}\n"
                   f"resolution: [16, 16]\ncontext_frames: 2\nmax_frames: 6\nclip_len: 2\nwindow: 6\n"
                   f"num_sample_steps: 1\n")
    port = int(free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "app.py", "--cfg", str(cfg), "--port", str(port), "log_dir",
                             str(tmp / "out")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while status_of_safe(url + "/") != 200:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() - t0 < 120, "app.py did not start"
            time.sleep(0.3)
        yield {"url": url, "out": tmp / "out" / "app", "weights": weights, "tmp": tmp}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def status_of_safe(url: str) -> int:
    try:
        return status_of(url)
    except OSError:
        return 0


def file_url(base: str, path) -> str:
    return f"{base}/gradio_api/file={urllib.parse.quote(str(pathlib.Path(path).resolve()))}"


@pytest.mark.slow
def test_only_the_page_own_files_are_served(served):
    from gradio_client import Client

    base, out = served["url"], served["out"]
    for refused in (ROOT / "data" / "demo" / "demo_physics.safetensors", served["weights"],
                    out / "config.yaml", out / "log.txt", ROOT / "pyproject.toml"):
        assert refused.is_file(), refused
        assert status_of(file_url(base, refused)) == 403, refused
    video, download, message = Client(base, verbose=False).predict("", 2, 1, 1.0, 1, api_name="/on_generate")
    assert message.startswith("2 generated frames"), message
    made = sorted(out.rglob("*.mp4"))
    assert made and status_of(file_url(base, made[0])) == 200  # its own outputs
    assert status_of(file_url(base, ROOT / "data" / "demo" / "physics_4242_000000.mp4")) == 200  # demo videos


@pytest.mark.slow
def test_a_text_file_as_the_animate_image_gives_the_page_error(served):
    from gradio_client import Client, handle_file

    text = served["tmp"] / "notes.txt"
    text.write_text("this is not an image\n")
    video, download, message = Client(served["url"], verbose=False).predict(
        handle_file(str(text)), 2, 1, 1.0, 1.0, 1, "", api_name="/on_animate")
    assert video is None and message.startswith("error: ") and "notes" in message and "\n" not in message, message
    assert "Traceback" not in (served["out"] / "log.txt").read_text()
