"""The web page's handlers (tools/inferences/web_app.py) without a browser or gradio: Predict /
Animate / Generate on the demo checkpoint, one-line errors for bad uploads and settings, the
command line. The gradio page itself is driven in tests/test_app_browser.py."""
import pathlib

import numpy as np
import pytest

from tools.inferences.web_app import NO_CLASS, PageError, WebApp, _as_int, load_app, main, upscale
from utils.video_io import probe_video, read_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_VIDEO = str(ROOT / "data/demo/physics_4242_000000.mp4")
FAST = ["backend.precision=fp32"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    out = tmp_path_factory.mktemp("app_out")
    return load_app(str(ROOT / "configs/tiny/predict.yaml"), ["log_dir", str(out)] + FAST, 50 << 20)


def _frames(path):
    return read_video(path)[0]


@pytest.mark.slow
def test_predict_writes_truth_and_prediction_side_by_side(app):
    calls = []
    res = app.predict(DEMO_VIDEO, context_frames=4, new_frames=4, steps=2, seed=3,
                      progress=lambda f, desc="": calls.append((f, desc)))
    assert res.video and res.download, res.message
    native = _frames(res.download)
    assert native.shape == (8, 32, 32 + 2 + 32, 3)  # truth | gap | prediction, context + 4 frames
    ctx_diff = np.abs(native[:4, :, :32].astype(int) - native[:4, :, 34:]).mean()
    assert ctx_diff < 3  # the context is shown as given (up to mp4 compression)
    view = probe_video(res.video)
    assert (view.height, view.num_frames) == (256, 8)  # enlarged for the page, same frames
    for p in (res.video, res.download):  # everything the page writes is in its output folder
        assert pathlib.Path(p).resolve().is_relative_to(app.out_dir.resolve())
    fractions = [f for f, _ in calls]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and "clip 1 of 1" in calls[-1][1]
    assert "4 context + 4 predicted frames" in res.message and "seed 3" in res.message


@pytest.mark.slow
def test_predictor_reports_progress_once_per_clip(app):
    calls = []
    video = app.predictor.predict(None, 1, num_frames=8, progress=lambda ci, n: calls.append((ci, n)))
    assert video.shape[1] == 8 and calls == [(0, 2), (1, 2)]  # clips of 4


@pytest.mark.slow
def test_request_settings_do_not_leak_into_the_next_call(app):
    before = dict(app.predictor.cfg)
    app.predict(DEMO_VIDEO, context_frames=2, new_frames=2, steps=1, seed=1)
    app.predict(DEMO_VIDEO, context_frames=0, new_frames=2, steps=1, seed=1)  # an error on the way
    assert dict(app.predictor.cfg) == before


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("broken_truncated.mp4", "cannot read 'broken_truncated.mp4': corrupt or truncated"),
    ("empty.mp4", "file is empty (0 bytes)"),
    ("odd_palette.gif", "odd_palette.gif is too short: 1 frames"),
])
def test_bad_uploads_give_one_line_errors_and_the_page_keeps_working(app, shared_data, name, expected):
    res = app.predict(str(shared_data / name), steps=1)
    assert (res.video, res.download) == (None, None)
    assert res.message.startswith("error: ") and expected in res.message and "\n" not in res.message
    assert str(shared_data) not in res.message  # the upload is named by its file name, not its cache path
    assert app.predict(DEMO_VIDEO, new_frames=1, steps=1).video  # still serving


def test_size_limits(app, shared_data):
    small = WebApp(app.predictor, app.out_dir, max_upload_bytes=1000)
    res = small.predict(str(shared_data / "videos/realshort.mp4"), steps=1)
    assert "realshort.mp4 is 0.1 MB; uploads may be at most" in res.message and "--max-upload-mb" in res.message
    narrow = WebApp(app.predictor, app.out_dir, max_side=16)
    res = narrow.predict(DEMO_VIDEO, steps=1)
    assert "frames are 32x32; the page takes at most 16 pixels a side" in res.message


@pytest.mark.parametrize("kwargs, expected", [
    (dict(video_path=None), "no video: upload one or pick a bundled demo video"),
    (dict(context_frames=0), "context frames=0 is not allowed: give a whole number in 1..63"),
    (dict(steps="many"), "sampling steps='many' is not a number"),
    (dict(seed=-1), "seed=-1 is not allowed"),
    (dict(guide_scale=3.0), "guide_scale=3.0 needs a conditional model"),
])
def test_bad_settings_are_reported_on_the_page(app, kwargs, expected):
    args = dict(video_path=DEMO_VIDEO, new_frames=1, steps=1)
    res = app.predict(**{**args, **kwargs})
    assert res.video is None and expected in res.message, res.message


@pytest.mark.slow
def test_animate_and_generate_on_the_unconditional_demo(app, tmp_path, shared_data):
    from PIL import Image

    png = tmp_path / "first.png"
    Image.fromarray(_frames(DEMO_VIDEO)[0]).save(png)
    res = app.animate(str(png), new_frames=3, steps=2, seed=5)
    frames = _frames(res.download)
    assert frames.shape == (4, 32, 32, 3), res.message
    assert np.abs(frames[0].astype(int) - _frames(DEMO_VIDEO)[0]).mean() < 8  # the image is frame 0
    assert "error: no image" in app.animate(None).message
    assert "not a readable image" in app.animate(str(shared_data / "broken_truncated.mp4")).message

    a, b, c = (app.generate(num_frames=4, steps=2, seed=s) for s in (7, 7, 8))
    assert _frames(a.download).shape == (4, 32, 32, 3) and "no condition" in a.message
    assert np.array_equal(_frames(a.download), _frames(b.download))  # the seed decides
    assert not np.array_equal(_frames(a.download), _frames(c.download))
    assert app.class_choices() is None and not app.conditional


@pytest.mark.slow
def test_generate_with_a_class_when_the_model_is_conditional(tmp_path):
    # the class model's weights are not shipped: random weights show the wiring, not quality
    app = load_app(str(ROOT / "configs/experiments/conditioning/class_to_video.yaml"),
                   ["log_dir", str(tmp_path), "test_model=null"] + FAST, 1 << 20)
    names = app.class_choices()
    assert app.conditional and len(names) == 15 and names[1] == "1 ball, gravity down"
    res = app.generate(names[1], num_frames=4, steps=1, guide_scale=3.0, seed=1)
    assert _frames(res.download).shape == (4, 32, 32, 3) and "condition '1 ball, gravity down'" in res.message
    assert "no condition" in app.generate(NO_CLASS, num_frames=4, steps=1, seed=1).message
    assert "unknown class label 'purple'" in app.generate("purple", num_frames=4, steps=1).message


def test_helpers():
    assert upscale(np.zeros((2, 32, 40, 3), np.uint8)).shape == (2, 256, 320, 3)
    assert upscale(np.zeros((1, 300, 300, 3), np.uint8)).shape == (1, 300, 300, 3)
    assert _as_int("n", 4.0, 1, 9) == 4
    with pytest.raises(PageError, match=r"n=4.5 is not allowed: give a whole number in 1..9"):
        _as_int("n", 4.5, 1, 9)


def test_command_line_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch):
    assert main(["--cfg", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--cfg", str(ROOT / "configs/tiny/predict.yaml"), "--bogus"]) == 2
    assert "unknown option(s) --bogus" in capsys.readouterr().err
    assert main(["--cfg", str(ROOT / "configs/tiny/predict.yaml"), "num_sample_steps=0", "log_dir",
                 str(tmp_path)]) == 2
    assert "num_sample_steps=0 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "app").exists()  # a bad config creates nothing
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gradio" else real(n, *a))
    assert main(["--cfg", str(ROOT / "configs/tiny/predict.yaml")]) == 2
    assert "pip install -r requirements-app.txt" in capsys.readouterr().err



def test_page_header_shows_the_window_the_predictor_uses(app):
    """predict.yaml asks for window 12; the shipped model was trained on 12 frames, so with clips of 4
    the predictor uses window 8, and the page must say so (it printed the config's 12)."""
    assert app.predictor.cfg.window == 12 and app.predictor.window == 8
    assert "window 8." in app.describe()
