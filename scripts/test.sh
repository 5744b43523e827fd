#!/usr/bin/env bash
# The README's test command: installs what the tests need on top of requirements.txt, then runs the
# whole suite. Run it in the environment of the README's first command (it activates ./.venv when no
# virtual environment is active). Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
#   - requirements-test.txt (pytest, selenium, ruff) and requirements-app.txt (gradio, the web page);
#   - Debian's chromium and chromedriver for tests/test_app_browser.py: installed with apt-get when this
#     runs as root and they are missing; otherwise it stops, saying how to install them (never skips).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
python -m pip install -q -r requirements-test.txt -r requirements-app.txt
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: installing Debian's chromium and chromium-driver for the web-page test" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q chromium chromium-driver >/dev/null
    else
        echo "scripts/test.sh: the web-page test needs chromium and chromedriver; install them with" \
             "'sudo apt-get install -y chromium chromium-driver' (Debian/Ubuntu) and run this again." >&2
        exit 1
    fi
fi
exec python -m pytest tests "$@"
