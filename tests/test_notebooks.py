"""The course's conventions hold in every notebook (nbval runs the notebooks themselves)."""

import json
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
SLUG = REPO_URL.removeprefix("https://github.com/")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_badge_and_setup_from_the_one_repo_url(path):
    cells = _load(path)["cells"]
    badge = (f"(https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/"
             f"{path.name})")
    assert "colab-badge.svg" in _source(cells[0]) and badge in _source(cells[0])
    assert "What you will learn" in _source(cells[0])
    setup = _source(cells[1])
    assert f'REPO = "{REPO_URL}"' in setup
    assert '%pip install -q --no-deps "git+{REPO}"' in setup  # never reinstalls Colab's torch
    assert "inception.seed_everything(" in setup and "describe_runtime()" in setup
    colab_links = set(re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/",
                                 json.dumps(cells)))
    assert colab_links == {SLUG}, f"badges in {path.name} point at {colab_links}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_metadata_asks_colab_for_a_gpu(path):
    meta = _load(path)["metadata"]
    assert meta["accelerator"] == "GPU" and "colab" in meta
    assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_lessons_and_exercises_with_solutions(path):
    cells = _load(path)["cells"]
    assert "What we learned" in _source(cells[-2])
    exercises = _source(cells[-1])
    assert "Exercises" in exercises and exercises.count("<details>") >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_lean_and_checks_its_deterministic_outputs(path):
    assert path.stat().st_size < 2_000_000
    nb = _load(path)
    checked = [c for c in nb["cells"] if c["cell_type"] == "code"
               and _source(c).startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 3
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "commit notebooks with their outputs"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"an error output is committed in {path}"
            assert "image/svg+xml" not in out.get("data", {}), "figures are stored as PNG"
