"""The web page: ``python app.py --cfg configs/tiny/predict.yaml [overrides]``.

A thin gradio layer over one :class:`~tools.inferences.predictor.Predictor` (the inference
path of the batch engine; nothing here samples on its own). Three tabs, and a fourth for a model that takes
per-frame actions:

- **Predict**: a video (uploaded, or a bundled ``data/demo/*.mp4``) -> ground truth | prediction.
- **Animate**: an image becomes the first frame.
- **Generate**: from a class / caption when the model is conditional, else from a seed alone.
- **Play**: an action-conditioned model as a game: buttons / keys choose the action of the next clip
  (tools/inferences/web_play.py).

:class:`WebApp` holds the handlers as plain methods (tested without gradio or a browser);
:func:`build_page` wires them into gradio Blocks. A bad upload (broken, too short, too large)
becomes one line on the page and the server keeps running. Every file the page writes (its
outputs in ``outputs/``, gradio's upload cache, the log) lands in ``<log_dir>/app``; gradio's telemetry and
run history are off, and it binds to 127.0.0.1 unless ``--host`` / ``--share`` say otherwise.
It serves its outputs, its uploads and the bundled demo videos, nothing else (:func:`served_paths`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.embedders.conditioning import is_conditional
from tools.inferences.page_inputs import PageError
from tools.inferences.page_inputs import as_float as _as_float
from tools.inferences.page_inputs import as_int as _as_int
from tools.inferences.predictor import Predictor, validate_rollout
from tools.inferences.web_play import Arcade, key_script, play_tab
from utils.cli import fail, load_checked_config, os_error_line, run_guarded
from utils.logging import get_logger
from utils.video_io import VideoReadError, probe_video, read_image, side_by_side, to_uint8, write_video

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / "data" / "demo"
#: the (unconditional) choice of the class dropdown: the embedder's null condition
NO_CLASS = "(none: unconditional)"
#: frames at most of one request (context + generated); a guard for the CPU, not a model limit
MAX_FRAMES = 64
VIEW_HEIGHT = 256  # the on-page video is upscaled (nearest) to about this height
ProgressFn = Callable[..., None] | None


@dataclass
class Result:
    """What a handler gives the page: the on-page mp4, the mp4 to download, a status line."""

    video: str | None
    download: str | None
    message: str


def upscale(frames: np.ndarray, height: int = VIEW_HEIGHT, max_width: int = 2048) -> np.ndarray:
    """uint8 (T, H, W, 3) enlarged by a whole factor (nearest neighbour) to about ``height``."""
    t, h, w, _ = frames.shape
    k = max(1, min(height // h, max_width // w))
    return frames if k == 1 else np.repeat(np.repeat(frames, k, axis=1), k, axis=2)


class WebApp:
    """The page's handlers over one Predictor; each writes its mp4s into ``out_dir``.

    ``max_upload_bytes`` and ``max_side`` bound what an upload may be (file size; pixels a side).
    Calls are serialised (one lock): a request's settings are swapped into the Predictor's
    config for that call only.
    """

    def __init__(self, predictor: Predictor, out_dir: os.PathLike, max_upload_bytes: int = 50 << 20,
                 max_side: int = 4096):
        self.predictor = predictor
        self.out_dir = Path(out_dir)
        self.outputs = self.out_dir / "outputs"  # the only folder of the page's own files that it serves
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_side = int(max_side)
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.arcade = Arcade(predictor, self.outputs, self._lock)  # the Play tab (action-conditioned models)

    # -- what the page shows -------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return is_conditional(self.predictor.embedder)

    def class_choices(self) -> list[str] | None:
        """Class names (or ids) of a class-label model, None for a caption model or no condition."""
        emb = self.predictor.embedder
        if not self.conditional or not hasattr(emb, "num_classes"):
            return None
        return list(emb.class_names or [str(i) for i in range(emb.num_classes)])

    def describe(self) -> str:
        cfg = self.predictor.cfg
        kind = "unconditional" if not self.conditional else "action-conditional" if self.arcade.available else \
            ("class-conditional" if self.class_choices() else "caption-conditional")
        weights = cfg.test_model or "random weights (no test_model)"
        adapters = getattr(self.predictor, "adapters", [])
        if adapters:  # LoRA adapters on the base (lora=PATH or lora=[{path, scale}])
            weights += " + LoRA " + ", ".join(f"`{a['path']}` x{a['scale']:g}" for a in adapters) + \
                (" (merged)" if cfg.get("lora_merge") else "")
        return (f"`{weights}`: {cfg.model.get('type')} ({kind}), {cfg.embedder.get('type')} embedder, "
                f"{self.predictor.hw[0]}x{self.predictor.hw[1]} frames, clips of {cfg.clip_len}, "
                f"window {self.predictor.window}. Outputs in `{self.out_dir}`.")

    # -- handlers ------------------------------------------------------------------
    def predict(self, video_path: str | None, context_frames=4, new_frames=8, steps=10, guide_scale=1.0,
                history_guide_scale=1.0, seed=8888, cond=None, progress: ProgressFn = None) -> Result:
        """A video's first ``context_frames`` -> ground truth | prediction."""
        def run():
            if not video_path:
                raise PageError("no video: upload one or pick a bundled demo video")
            ctx = _as_int("context frames", context_frames, 1, MAX_FRAMES - 1)
            total = ctx + _as_int("frames to generate", new_frames, 1, MAX_FRAMES - ctx)
            self._check_video(video_path, ctx)
            with self._settings(ctx, total, steps, guide_scale, history_guide_scale):
                _report(progress, 0.0, "reading the video")
                video = self.predictor.load_video(video_path, total)
                context = video[:, :ctx]
                pred = self._sample(context, seed, cond, total, progress)
            frames = side_by_side(video, pred) if video.shape[1] > ctx else to_uint8(pred)
            n = video.shape[1]
            note = "" if n >= total else f" (the video has {n} frames: ground truth ends there)"
            return frames, f"ground truth | prediction: {ctx} context + {total - ctx} predicted frames{note}"

        return self._run("predict", seed, run, video_path)

    def animate(self, image_path: str | None, new_frames=8, steps=10, guide_scale=1.0, history_guide_scale=1.0,
                seed=8888, cond=None, progress: ProgressFn = None) -> Result:
        """An image as the first frame -> a video."""
        def run():
            if not image_path:
                raise PageError("no image: upload one (png, jpg, ...)")
            total = 1 + _as_int("frames to generate", new_frames, 1, MAX_FRAMES - 1)
            self._check_image(image_path)
            with self._settings(1, total, steps, guide_scale, history_guide_scale):
                context = self.predictor.load_image(image_path)
                pred = self._sample(context, seed, cond, total, progress)
            return to_uint8(pred), f"the image + {total - 1} generated frames"

        return self._run("animate", seed, run, image_path)

    def generate(self, cond=None, num_frames=8, steps=10, guide_scale=1.0, seed=8888,
                 progress: ProgressFn = None) -> Result:
        """From nothing but a seed (and the class / caption of a conditional model)."""
        def run():
            total = _as_int("frames", num_frames, 1, MAX_FRAMES)
            with self._settings(0, total, steps, guide_scale, 1.0):
                pred = self._sample(None, seed, cond, total, progress)
            what = f"condition {cond!r}" if self._cond_value(cond) is not None else "no condition"
            return to_uint8(pred), f"{total} generated frames, {what}"

        return self._run("generate", seed, run)

    # -- plumbing ------------------------------------------------------------------
    def _run(self, kind: str, seed, run: Callable, upload: str | None = None) -> Result:
        """Run one request: its frames as mp4s and a status line, or the error as a status line."""
        t0 = time.time()
        try:
            seed_i = _as_int("seed", seed, 0, 2 ** 63 - 1)
            with self._lock:
                frames, what = run()
                native, view = self._save(kind, seed_i, frames)
        except (PageError, VideoReadError, ValueError) as e:  # ConfigError is a ValueError
            return Result(None, None, "error: " + _short_paths(str(e), upload))
        except OSError as e:  # the output folder: permission, disk full
            return Result(None, None, os_error_line(e))
        except Exception as e:  # a bug: logged with its traceback, the page stays up
            get_logger().error("%s failed:\n%s", kind, traceback.format_exc())
            return Result(None, None, f"error: {kind} failed ({type(e).__name__}: {e}); see the log in {self.out_dir}")
        msg = f"{what}, seed {seed_i}, {time.time() - t0:.1f} s. Saved {native}"
        get_logger().info("%s: %s", kind, msg)
        return Result(str(view), str(native), msg)

    @contextlib.contextmanager
    def _settings(self, context_frames: int, max_frames: int, steps, guide_scale, history_guide_scale):
        """This request's settings in the Predictor's config for the duration of one call."""
        p, old = self.predictor, self.predictor.cfg
        cfg = copy.deepcopy(old)
        cfg.update(context_frames=context_frames, max_frames=max_frames,
                   num_sample_steps=_as_int("sampling steps", steps, 1, 200),
                   guide_scale=_as_float("guidance scale", guide_scale, 0.0, 20.0),
                   history_guide_scale=_as_float("history guidance scale", history_guide_scale, 0.0, 20.0))
        validate_rollout(cfg)
        p.cfg = cfg
        try:
            p.check_settings()
            yield cfg
        finally:
            p.cfg = old

    def _cond_value(self, cond):
        """The page's class / caption -> the Predictor's cond_value (None = the null condition)."""
        if not self.conditional or cond is None or str(cond).strip() in ("", NO_CLASS):
            return None
        return str(cond).strip()

    def _sample(self, context, seed, cond, total: int, progress: ProgressFn):
        def step(ci: int, n: int) -> None:
            _report(progress, (ci + 1) / n, f"clip {ci + 1} of {n}")

        _report(progress, 0.0, "sampling")
        return self.predictor.predict(context, int(seed), self._cond_value(cond), total, progress=step)

    def _check_upload(self, path: str) -> None:
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if size > self.max_upload_bytes:
            raise PageError(f"{Path(path).name} is {size / 2**20:.1f} MB; uploads may be at most "
                            f"{self.max_upload_bytes / 2**20:.0f} MB (start the app with --max-upload-mb to change it)")

    def _check_size(self, name: str, h: int, w: int) -> None:
        if max(h, w) > self.max_side:
            raise PageError(f"{name}: frames are {w}x{h}; the page takes at most {self.max_side} pixels a side "
                            f"(the model sees {self.predictor.hw[1]}x{self.predictor.hw[0]}); downscale it first")

    def _check_video(self, path: str, context_frames: int) -> None:
        """Size limits and enough frames, before anything is decoded."""
        self._check_upload(path)
        info = probe_video(path)
        name = Path(path).name
        self._check_size(name, info.height, info.width)
        usable = len(range(0, info.num_frames, int(self.predictor.cfg.frame_stride)))
        if usable < context_frames:
            raise PageError(f"{name} is too short: {info.num_frames} frames (at frame_stride "
                            f"{self.predictor.cfg.frame_stride}: {usable}) but context frames is {context_frames}; "
                            f"lower 'context frames' or upload a longer video")

    def _check_image(self, path: str) -> None:
        self._check_upload(path)
        h, w = read_image(path).shape[:2]
        self._check_size(Path(path).name, h, w)

    def _save(self, kind: str, seed: int, frames: np.ndarray):
        """The native-size mp4 (download) and an enlarged copy for the page, both in out_dir/outputs."""
        stem = f"{kind}_{time.strftime('%Y%m%d-%H%M%S')}_{next(self._count):04d}_seed{seed}"
        fps = float(self.predictor.cfg.fps)
        native = write_video(self.outputs / f"{stem}.mp4", frames, fps)
        view = write_video(self.outputs / "view" / f"{stem}.mp4", upscale(frames), fps)
        return Path(native), Path(view)


def _report(progress: ProgressFn, fraction: float, desc: str) -> None:
    if progress is not None:
        progress(fraction, desc=desc)


def _short_paths(message: str, upload: str | None) -> str:
    """Name an upload by its file name, not by gradio's cache path."""
    if upload:
        message = message.replace(str(upload), Path(upload).name)
    return message


def demo_videos() -> list[tuple[str, str]]:
    """The bundled demo videos (data/demo/*.mp4) as (file name, path) choices."""
    return [(p.name, str(p)) for p in sorted(DEMO_DIR.glob("*.mp4"))]


# ---------------------------------------------------------------------------- the page
def _settings_inputs(gr, cfg, conditional: bool, with_history: bool, frames_label: str, frames_default: int):
    """The sliders every tab has: frames, steps, guidance scale(s), seed."""
    frames = gr.Slider(1, MAX_FRAMES - 1, value=frames_default, step=1, label=frames_label)
    steps = gr.Slider(1, 100, value=int(cfg.num_sample_steps), step=1, label="sampling steps")
    guide = gr.Slider(1.0, 10.0, value=float(cfg.guide_scale), step=0.5, label="guidance scale (condition)",
                      visible=conditional)
    hist = gr.Slider(1.0, 10.0, value=float(cfg.history_guide_scale), step=0.5,
                     label="history guidance scale", visible=with_history)
    seed = gr.Number(value=int(cfg.seed), precision=0, minimum=0, label="seed")
    return frames, steps, guide, hist, seed


def _cond_input(gr, app: WebApp, elem_id: str):
    """A class dropdown, a caption box, or (unconditional model) a hidden box."""
    classes = app.class_choices()
    if classes:
        return gr.Dropdown([NO_CLASS] + classes, value=classes[0], label="class", elem_id=elem_id)
    if app.conditional:
        return gr.Textbox(label="caption (empty: unconditional)", elem_id=elem_id)
    return gr.Textbox(visible=False, elem_id=elem_id)


def _outputs(gr, prefix: str):
    video = gr.Video(label="ground truth | prediction" if prefix == "predict" else "generated",
                     elem_id=f"{prefix}_output", interactive=False, autoplay=True, loop=True, height=300)
    download = gr.File(label="mp4 download", elem_id=f"{prefix}_download", interactive=False)
    status = gr.Markdown(elem_id=f"{prefix}_status")
    return [video, download, status]


def _fields(res: Result):
    return res.video, res.download, res.message


def _upload_path(payload) -> str | None:
    """The file path of a raw (not preprocessed) gradio upload: an image's FileData, or a video's
    ``{"video": FileData}``. The handlers read uploads themselves, so a file that is not what the
    input expects (a text file sent as the image through the API) gets the page's one-line error,
    not gradio's generic one. gradio has checked before that the file is one of its uploads."""
    if payload is None:
        return None
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump()
    if isinstance(payload, dict):
        inner = payload.get("video", payload)
        return inner.get("path") if isinstance(inner, dict) else None
    return str(payload)


def served_paths(app: WebApp) -> tuple[list[str], list[str]]:
    """(allowed, blocked) paths for gradio: the page serves its own outputs, its uploads (gradio's cache,
    always allowed) and the bundled demo videos (file by file), nothing else: not the weights beside
    them, not the run's config.yaml or log.txt."""
    app.outputs.mkdir(parents=True, exist_ok=True)
    allowed = [str(app.outputs.resolve())] + [str(Path(p).resolve()) for _, p in demo_videos()]
    blocked = [str((app.out_dir / name).resolve()) for name in ("config.yaml", "log.txt")]
    tm = app.predictor.cfg.get("test_model")
    if tm:
        blocked.append(str(Path(tm).resolve()))
    return allowed, blocked


def build_page(app: WebApp):
    """gradio Blocks wiring WebApp's handlers to the three tabs (one model call at a time)."""
    import gradio as gr

    cfg = app.predictor.cfg
    cond = app.conditional
    ctx_default = max(1, int(cfg.context_frames) or 4)
    new_default = max(1, int(cfg.max_frames) - int(cfg.context_frames))
    run = dict(concurrency_id="model", concurrency_limit=1)

    def on_predict(video, ctx, new, steps, g, hg, seed, c, progress=gr.Progress()):
        return _fields(app.predict(_upload_path(video), ctx, new, steps, g, hg, seed, c, progress=progress))

    def on_animate(image, new, steps, g, hg, seed, c, progress=gr.Progress()):
        return _fields(app.animate(_upload_path(image), new, steps, g, hg, seed, c, progress=progress))

    def on_generate(c, n, steps, g, _hg, seed, progress=gr.Progress()):
        return _fields(app.generate(c, n, steps, g, seed, progress=progress))

    with gr.Blocks(title="NextClip", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## NextClip\n{app.describe()}")
        with gr.Tab("Predict", id="predict"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="video (upload)", sources=["upload"], elem_id="predict_input",
                                     include_audio=True, height=240)
                    demo = gr.Dropdown(demo_videos(), value=None, label="or pick a bundled demo video",
                                       elem_id="predict_demo")
                    ctx = gr.Slider(1, MAX_FRAMES - 1, value=ctx_default, step=1, label="context frames")
                    sliders = _settings_inputs(gr, cfg, cond, True, "frames to generate", new_default)
                    c = _cond_input(gr, app, "predict_cond")
                    button = gr.Button("Predict", variant="primary", elem_id="predict_button")
                with gr.Column():
                    out = _outputs(gr, "predict")
            demo.change(lambda p: p, demo, video)
            button.click(on_predict, [video, ctx, *sliders, c], out, preprocess=False, **run)
        with gr.Tab("Animate", id="animate"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="first frame (upload)", type="filepath", sources=["upload"],
                                     elem_id="animate_input", height=240)
                    sliders = _settings_inputs(gr, cfg, cond, True, "frames to generate", new_default)
                    c = _cond_input(gr, app, "animate_cond")
                    button = gr.Button("Animate", variant="primary", elem_id="animate_button")
                with gr.Column():
                    out = _outputs(gr, "animate")
            button.click(on_animate, [image, *sliders, c], out, preprocess=False, **run)
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    c = _cond_input(gr, app, "generate_cond")
                    if not cond:
                        gr.Markdown("This model takes no condition: it generates from the seed alone.")
                    sliders = _settings_inputs(gr, cfg, cond, False, "frames", int(cfg.max_frames))
                    button = gr.Button("Generate", variant="primary", elem_id="generate_button")
                with gr.Column():
                    out = _outputs(gr, "generate")
            button.click(on_generate, [c, *sliders], out, **run)
        if app.arcade.available:
            with gr.Tab("Play", id="play"):
                play_tab(gr, app.arcade, upscale, run)
    return page


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py", allow_abbrev=False,
        usage="%(prog)s --cfg FILE [--host H] [--port P] [--share] [--max-upload-mb N] [--debug] [overrides ...]",
        description="NextClip web page: Predict / Animate / Generate with the model of an inference config.",
        epilog="Overrides as for inference.py: a.b.c=value or KEY VALUE pairs (e.g. test_model CKPT).")
    p.add_argument("--cfg", required=True, help="inference YAML file (e.g. configs/tiny/predict.yaml)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: the first free one from 7860 on)")
    p.add_argument("--share", action="store_true", help="also make a public gradio share link (opt-in)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for config and input errors")
    return p


def load_app(cfg_path: str, overrides: Sequence[str], max_upload_bytes: int) -> WebApp:
    """Config (+ overrides) -> the output folder, its log and config.yaml, a Predictor, a WebApp."""
    from utils.config import to_yaml
    from utils.io import atomic_write_text
    from utils.logging import setup_logger
    from utils.registry import INFER_ENGINE

    cfg = load_checked_config(cfg_path, overrides, INFER_ENGINE)
    validate_rollout(cfg)
    out_dir = Path(cfg.log_dir) / "app"
    setup_logger(out_dir, 0)
    atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
    return WebApp(Predictor(cfg), out_dir, max_upload_bytes=max_upload_bytes)


def _keep_gradio_inside(out_dir: Path) -> None:
    """gradio's upload cache (and matplotlib's font cache) into the output folder; no telemetry,
    version check or run history.
    Must run before gradio is imported (it reads GRADIO_TEMP_DIR at import)."""
    os.environ["GRADIO_TEMP_DIR"] = str((out_dir / "gradio").resolve())
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
    os.environ.setdefault("MPLCONFIGDIR", str((out_dir / "matplotlib").resolve()))  # gradio imports matplotlib
    if "gradio" in sys.modules:
        get_logger().warning("gradio was imported before the app set GRADIO_TEMP_DIR: uploads may go to %s",
                             os.environ.get("TMPDIR", "/tmp"))


def main(argv: Sequence[str] | None = None) -> int:
    """``app.py``: load the config, build the page, serve it until Ctrl-C."""
    args, overrides = _parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        return fail(f"error: unknown option(s) {' '.join(bad)}; see python app.py --help", False)
    if importlib.util.find_spec("gradio") is None:  # found, not imported: see _keep_gradio_inside
        return fail("error: the web page needs gradio: pip install -r requirements-app.txt", False)
    max_bytes = int(args.max_upload_mb * 2 ** 20)
    return run_guarded(lambda: serve(load_app(args.cfg, overrides, max_bytes), args.host, args.port, args.share,
                                     args.max_upload_mb), args.debug)


def serve(app: WebApp, host: str, port: int, share: bool, max_upload_mb: float) -> int:
    """Launch the page (blocks until Ctrl-C)."""
    _keep_gradio_inside(app.out_dir)
    import gradio as gr

    if host not in ("127.0.0.1", "localhost", "::1"):
        get_logger().warning("binding %s: the page is reachable from other machines on the network", host)
    page = build_page(app)
    page.queue(default_concurrency_limit=1)
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page needs no network
    allowed, blocked = served_paths(app)
    page.launch(server_name=host, server_port=port or None, share=share, max_file_size=f"{int(max_upload_mb)}mb",
                head=key_script() if app.arcade.available else None,
                allowed_paths=allowed, blocked_paths=blocked, show_error=False, quiet=False,
                run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False,
                theme=gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"]))
    return 0
