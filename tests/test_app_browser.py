"""The web page in a real headless browser: ``python app.py`` on the demo checkpoint, driven by
Debian's chromium through selenium + chromedriver (no browser download at run time).

Uploads a real video, runs a prediction, checks that a playable <video> appears, uploads a
broken file and checks the error on the page, generates from a seed; the server keeps running,
and nothing is written outside the run's output folder. Saves workspace/app_browser.png.
Needs: apt-get install -y chromium chromium-driver; pip install -r requirements-app.txt.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from ports import free_port
from test_web_play import action_model

pytestmark = pytest.mark.browser  # headless Chromium (Debian's chromium + chromedriver)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "workspace" / "app_browser.png"
INSTALL = "apt-get install -y chromium chromium-driver && pip install -r requirements-app.txt (as .ci/run does)"
VIDEO_STATE = """const v = document.querySelector('#predict_output video');
return v ? {src: v.currentSrc, ready: v.readyState, duration: v.duration, width: v.videoWidth,
            error: v.error && v.error.code} : null;"""
PLAY = """const done = arguments[arguments.length - 1], v = document.querySelector('#predict_output video');
v.muted = true;
v.play().then(() => setTimeout(() => done({time: v.currentTime, paused: v.paused}), 400))
        .catch(e => done({error: String(e)}));"""


def _browser_paths():
    """(chromium, chromedriver) or a failure that says how to install them."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(f"headless Chromium is missing (chromium: {chromium}, chromedriver: {driver}); install it "
                    f"with: {INSTALL}", pytrace=False)
    return chromium, driver


def _wait_until_serving(proc, url: str, timeout: float = 90.0) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with code {proc.returncode}:\n{proc.stdout.read()}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"app.py did not serve {url} within {timeout:.0f} s", pytrace=False)


def _serve(tmp_path, cfg: str, overrides: list[str]):
    """app.py on ``cfg``, with its own empty HOME and TMPDIR (checked afterwards)."""
    home, tmp, out = tmp_path / "home", tmp_path / "tmp", tmp_path / "out"
    home.mkdir(), tmp.mkdir()
    port = int(free_port())
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"))
    env.pop("GRADIO_TEMP_DIR", None), env.pop("MPLCONFIGDIR", None)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "app.py", "--cfg", cfg, "--port", str(port), *overrides,
                             "log_dir", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until_serving(proc, f"http://127.0.0.1:{port}/")
        yield {"url": f"http://127.0.0.1:{port}/", "proc": proc, "out": out / "app", "startup": time.time() - t0}
        assert proc.poll() is None, "the server stopped during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    written = [str(p) for p in [*home.rglob("*"), *tmp.rglob("*")]]
    assert not written, f"the app wrote outside its output folder: {written[:5]}"


@pytest.fixture
def served(tmp_path):
    """app.py on the demo checkpoint."""
    yield from _serve(tmp_path, "configs/tiny/predict.yaml", [])


@pytest.fixture
def served_play(tmp_path):
    """app.py on configs/atari/play.yaml with a tiny action-conditioned model (random weights)."""
    yield from _serve(tmp_path, "configs/atari/play.yaml", action_model(tmp_path))


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_paths()  # checked again by the test: a missing browser FAILS it
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is missing: {INSTALL}", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _upload_and_predict(driver, wait, path: str) -> float:
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#predict_input input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#predict_input input[type=file]").send_keys(path)
    # the upload is done when the input shows the file (a preview, or its name for an unplayable one)
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#predict_input input[type=file]")
               or d.find_elements(By.CSS_SELECTOR, "#predict_input video"))
    t0 = time.time()
    driver.find_element(By.ID, "predict_button").click()
    return t0


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "predict_status").text


def test_upload_predict_and_a_broken_file_in_headless_chromium(request, shared_data):
    _browser_paths()  # before the app starts; fails (never skips) with how to install
    browser, served = request.getfixturevalue("browser"), request.getfixturevalue("served")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(served["url"])
    t0 = _upload_and_predict(browser, wait, str(shared_data / "videos" / "cat_walking.mp4"))
    state = wait.until(lambda d: (s := d.execute_script(VIDEO_STATE)) and s["ready"] >= 2 and s)
    predict_s = time.time() - t0
    assert state["error"] is None and state["duration"] > 0 and state["width"] > 0, state
    played = browser.execute_async_script(PLAY)
    assert "error" not in played and played["time"] > 0, f"the video does not play: {played}"
    assert "ground truth | prediction: 4 context + 8 predicted frames" in _status(browser)
    link = browser.find_element(By.CSS_SELECTOR, "#predict_download a").get_attribute("href")
    assert link.endswith(".mp4"), link
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(SCREENSHOT))
    assert list((served["out"] / "outputs").glob("predict_*.mp4")), "the prediction is saved in the output folder"

    browser.refresh()  # a fresh upload box
    _upload_and_predict(browser, wait, str(shared_data / "broken_truncated.mp4"))
    wait.until(lambda d: _status(d).startswith("error"))
    msg = _status(browser)
    assert "cannot read 'broken_truncated.mp4': corrupt or truncated" in msg, msg
    assert browser.execute_script(VIDEO_STATE) is None  # no stale video beside the error
    with urllib.request.urlopen(served["url"], timeout=5) as r:  # the server keeps running
        assert r.status == 200

    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Generate')]").click()
    wait.until(lambda d: d.find_element(By.ID, "generate_button").is_displayed())
    browser.find_element(By.ID, "generate_button").click()  # unconditional, from the seed
    wait.until(lambda d: d.execute_script(VIDEO_STATE.replace("predict_output", "generate_output")))
    assert "12 generated frames, no condition" in browser.find_element(By.ID, "generate_status").text
    print(json.dumps({"app_startup_s": round(served["startup"], 2), "predict_in_browser_s": round(predict_s, 2)}))


def test_play_tab_start_keys_and_buttons_in_headless_chromium(request):
    """The Play tab: Start from a held-out episode, the arrow key and a button each add a clip, the game is saved."""
    _browser_paths()
    browser, served = request.getfixturevalue("browser"), request.getfixturevalue("served_play")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    status = lambda: browser.find_element(By.ID, "play_status").text  # noqa: E731
    browser.get(served["url"])
    tab = wait.until(lambda d: d.find_elements(By.XPATH, "//button[@role='tab'][contains(., 'Play')]"))
    tab[0].click()
    wait.until(lambda d: d.find_element(By.ID, "play_start").is_displayed())
    browser.find_element(By.ID, "play_start").click()
    wait.until(lambda d: "4 frames of history" in status())
    t0 = time.time()
    ActionChains(browser).send_keys(Keys.ARROW_UP).perform()  # the page's key script presses the UP button
    wait.until(lambda d: status().startswith("UP: 4 frames"))
    key_to_frame_s = time.time() - t0
    assert "4 frames played" in status(), status()
    frame = browser.find_element(By.CSS_SELECTOR, "#play_frame img")
    assert frame.get_attribute("src") and frame.size["width"] >= 256, frame.size  # upscaled for the page
    browser.find_element(By.ID, "play_DOWN").click()
    wait.until(lambda d: status().startswith("DOWN: 4 frames") and "8 frames played" in status())
    browser.find_element(By.ID, "play_save").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#play_download a"))
    link = browser.find_element(By.CSS_SELECTOR, "#play_download a").get_attribute("href")
    assert link.endswith(".mp4"), link
    assert list((served["out"] / "outputs").glob("play_*.mp4")), "the game is saved in the output folder"
    print(json.dumps({"play_key_to_frames_s": round(key_to_frame_s, 2)}))
