"""scripts/test.sh, the README's test command: the README and CI run it to the letter, and without a
browser it can neither install (not root) it stops before the tests with one line saying how."""
import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fenced_commands(text: str) -> list:
    return [ln.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in block.splitlines()]


def test_ci_runs_the_readme_commands_to_the_letter():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    first, second = blocks[0].strip(), blocks[1].strip()  # "The two commands": install + demo, then the tests
    assert first.endswith("python inference.py --cfg configs/demo/predict.yaml") and "pip install -r requirements.txt" in first
    assert second == "bash scripts/test.sh"
    ci = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    assert first in ci and second in ci and ci.index(first) < ci.index(second)
    assert (ROOT / "scripts/test.sh").is_file()


@pytest.mark.slow
def test_without_a_browser_and_not_root_it_stops_before_the_tests_saying_how(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {"python": f'exec {sys.executable} "$@"', "id": "echo 1000", "dirname": "exec /usr/bin/dirname \"$@\""}
    for name, body in shims.items():  # a PATH with python but neither chromium, chromedriver nor apt-get
        f = bin_dir / name
        f.write_text(f"#!/bin/sh\n{body}\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k not in ("PATH",)}
    env.update(PATH=str(bin_dir), VIRTUAL_ENV=str(pathlib.Path(sys.executable).parents[1]), PIP_NO_INDEX="1")
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts/test.sh"), "--collect-only"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("scripts/test.sh:")]
    assert len(lines) == 1 and "apt-get install -y chromium chromium-driver" in lines[0], r.stderr
    assert "collected" not in r.stdout  # pytest never ran
