"""Every ``train_net.py`` / ``inference.py`` command in README.md and the docs loads and validates.

The docs are every Markdown file under ``docs/`` and ``configs/`` (the study READMEs).

The commands are taken from the README's shell code blocks and inline code spans (a
``torchrun ...`` launcher prefix or a ``... &&`` setup chain is dropped, the entry point's
arguments are kept) and run in-process through ``utils.cli.main`` with ``--dry-run``.
"""
import pathlib
import re
import shlex

import pytest

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {"train_net.py": "train", "inference.py": "infer"}
LAUNCHERS = {"python", "python3", "torchrun"}
SHELL_OPS = {"&&", "||", ";", "|"}


def _commands_in(line: str) -> list[tuple[str, list[str]]]:
    """(kind, argv) of each entry-point call on one shell line."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)  # `a; b`, `a&&b`: operators are their own words
    lex.whitespace_split = True
    try:
        words = list(lex)
    except ValueError:  # a line of a multi-line shell string (python -c "..."): not an entry-point command
        if any(name in line for name in SCRIPTS):
            raise
        return []
    out = []
    cmds, cur = [], []
    for w in words + [";"]:
        if w in SHELL_OPS:
            cmds.append(cur)
            cur = []
        else:
            cur.append(w)
    for cmd in cmds:
        if not cmd or pathlib.PurePath(cmd[0]).name not in LAUNCHERS:
            continue
        script = next((i for i, w in enumerate(cmd) if pathlib.PurePath(w).name in SCRIPTS), None)
        if script is not None:
            out.append((SCRIPTS[pathlib.PurePath(cmd[script]).name], cmd[script + 1:]))
    return out


def readme_commands(text: str) -> list[tuple[str, list[str], str]]:
    """(kind, argv, source line) of every entry-point command in a Markdown text."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"(?<!`)`([^`\n]*(?:train_net|inference)\.py[^`\n]*)`(?!`)", text)
    return [(kind, argv, line.strip()) for line in lines for kind, argv in _commands_in(line)]


def run_dry(kind: str, argv: list[str]) -> int:
    """The command through its entry point (train_net.py adds ``--world-size`` and the memory plan)."""
    import train_net

    run = train_net.run if kind == "train" else (lambda a: main(kind, a))
    if "--list" in argv:
        return run(argv)
    return run(argv + ([] if "--dry-run" in argv else ["--dry-run"]))


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "configs").rglob("*.md"))]
COMMANDS = [(kind, argv, f"{doc.relative_to(ROOT)}: {line}") for doc in DOCS
            for kind, argv, line in readme_commands(doc.read_text(encoding="utf-8"))]
README_COMMANDS = [c for c in COMMANDS if c[2].startswith("README.md: ")]
#: each distinct command once (169 lines in the docs are 120 commands), named by its first place
UNIQUE = list({(kind, tuple(argv)): (kind, argv, line) for kind, argv, line in reversed(COMMANDS)}.values())[::-1]


def test_the_readme_commands_are_found():
    lines = {line for _, _, line in README_COMMANDS}
    assert len(README_COMMANDS) >= 12, lines
    assert len(COMMANDS) >= 60 and {c[2].split(":")[0] for c in COMMANDS} >= {"docs/guide/configs.md"}
    assert {k for k, _, _ in COMMANDS} == {"train", "infer"}
    assert any("torchrun" in line for line in lines) and any("&&" in line for line in lines)


#: dry runs that plan the memory of a released billion-parameter model (1-5 s each): behind the slow marker
HEAVY = {"configs/modelscope/t2v_train.yaml", "configs/latte/train.yaml"}


def _param(kind, argv, line):
    heavy = kind == "train" and "--cfg" in argv and argv[argv.index("--cfg") + 1] in HEAVY
    return pytest.param(kind, argv, line, id=line, marks=[pytest.mark.slow] if heavy else [])


@pytest.mark.parametrize("kind, argv, line", [_param(*c) for c in UNIQUE])
def test_readme_command_validates(kind, argv, line, monkeypatch, capsys):
    from test_entry_points import CLUSTER_INPUTS

    monkeypatch.chdir(ROOT)
    cfg = argv[argv.index("--cfg") + 1] if "--cfg" in argv else None
    argv = argv + CLUSTER_INPUTS.get(cfg, [])  # configs run on weights their training makes
    assert run_dry(kind, argv) == 0, f"README command fails: {line}\n{capsys.readouterr().err}"


def test_a_broken_example_is_caught(monkeypatch, capsys):
    text = ("Some text `python train_net.py --cfg configs/tiny/train.yaml num_stepz=3` and\n\n"
            "```bash\n"
            "python3 -m venv .venv && python inference.py --cfg configs/tiny/predict.yaml  # ok\n"
            "torchrun --nproc_per_node 2 train_net.py --cfg configs/tiny/train.yaml \\\n"
            "    model.depth=4   # a continued line\n"
            "python -m pytest tests\n"
            "```\n")
    found = readme_commands(text)
    assert [(k, a) for k, a, _ in found] == [
        ("infer", ["--cfg", "configs/tiny/predict.yaml"]),
        ("train", ["--cfg", "configs/tiny/train.yaml", "model.depth=4"]),
        ("train", ["--cfg", "configs/tiny/train.yaml", "num_stepz=3"]),
    ]
    monkeypatch.chdir(ROOT)
    assert [run_dry(k, a) for k, a, _ in found] == [0, 2, 2]
    err = capsys.readouterr().err
    assert "+model.depth=4" in err and "Did you mean num_steps" in err
