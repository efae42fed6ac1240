"""The set-up stays true: environment.yml installs pyproject's package set; CI runs the README's two commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_project_with_every_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    (pip_section,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    (editable,) = [line for line in pip_section if line.startswith("-e .")]
    extras = set(re.search(r"\[(.*)\]", editable).group(1).split(","))
    # every extra but "sky": SkyPilot launches the rented box from the laptop and is not needed on it
    assert extras == set(pyproject["project"]["optional-dependencies"]) - {"sky"}
    # conda adds only the interpreter, pip and the CUDA build of torch, which pyproject lists as "torch"
    names = {re.split(r"[=<>]", d)[0] for d in conda}
    assert names == {"python", "pip", "pytorch"}
    assert any(dep.startswith("torch") for dep in pyproject["project"]["dependencies"])
    python = next(d for d in conda if d.startswith("python="))
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```(?:bash|sh)\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_two_commands_and_ci_runs_both():
    commands = readme_commands()
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index(commands[0]) < ci.index(commands[1])


def test_quickstart_installs_torch_first_then_the_project_then_renders():
    script = (ROOT / "scripts" / "quickstart.sh").read_text()
    torch_at = script.index("torch==2.13.0")
    project_at = script.index('pip install -q -e ".[notebooks,test]"')
    render_at = script.index("wanflow render")
    assert torch_at < project_at < render_at
    assert "HF_HUB_OFFLINE=1" in (ROOT / "scripts" / "test.sh").read_text()
