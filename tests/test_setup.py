"""The project's setup files agree with each other, so conda and pip users get the same stack."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]


def _environment_pip_requirements() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    reqs = [line.strip()[2:] for line in lines[start:] if line.startswith("      - ")]
    return [r for r in reqs if r != "-e ."]


def test_environment_yml_lists_exactly_the_pyproject_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(_environment_pip_requirements()) == sorted(expected)
    assert "      - -e ." in (ROOT / "environment.yml").read_text().splitlines()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "\nmake test\n" in ci
