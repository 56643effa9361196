"""The README's two commands are what CI runs, and what they install is enough for every feature the
README advertises and every test CI runs."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md: no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _pip_installs(command: str) -> list[list[str]]:
    """The arguments after `pip install` of every pip call in one shell line, options dropped."""
    found = []
    for part in re.split(r"&&|;|\n", command):
        if "pip" not in part:
            continue
        words = shlex.split(part, comments=True)
        if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
            found.append([w for w in words[2:] if w not in ("-q", "-e", "--quiet", "--editable")])
    return found


def _requirements(names: list[str]) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in names:
        lines += project["optional-dependencies"][extra]
    return {Requirement(line).name: Requirement(line) for line in lines}


def test_ci_installs_exactly_what_the_readme_installs_and_runs_its_test_command():
    install, tests = _readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_installs = [args for line in ci.splitlines() for args in _pip_installs(line)]
    assert ci_installs == _pip_installs(install), "`.ci/run` must install exactly README line 1's packages"
    run_lines = [line.strip() for line in ci.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")]
    assert run_lines and run_lines[0] == tests


def test_the_readme_install_brings_parquet_and_the_ray_engine_the_tests_use():
    (args,) = _pip_installs(_readme_commands()[0])
    extras = re.fullmatch(r"\.\[(.*)\]", args[0]).group(1).split(",")
    installed = _requirements(extras)
    # `predict --out scores.parquet` is advertised for every user: pyarrow is a core dependency.
    assert "pyarrow" in _requirements([])
    # The Ray Data tests run in CI, which installs only the README's extras.
    assert "ray" in installed and "data" in installed["ray"].extras
    # Users still ask for the engine by its own name.
    assert "ray" in _requirements(["ray"])
