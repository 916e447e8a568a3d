"""A notebook opened alone, as Colab does, in a checkout where nothing has been trained yet."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from inception.data import default_root

ROOT = Path(__file__).resolve().parents[1]


def _outputs_text(notebook: Path) -> str:
    nb = nbformat.read(notebook, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_notebook_05_alone_studies_the_reference_weights_and_trains_nothing(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "inception", repo / "inception",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo)
    (repo / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "05_evaluation.ipynb", repo / "notebooks")
    shipped = set(repo.rglob("*.pt"))
    # Quick mode, as CI runs it; the data (or, without it, the synthetic stand-in) from the
    # usual place, so the copy needs no download.
    env = {**os.environ, "INCEPTION_QUICK": "1", "INCEPTION_DATA": str(default_root())}
    env.pop("INCEPTION_STUDY", None)
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--output", "executed.ipynb", "--ExecutePreprocessor.timeout=600",
         "05_evaluation.ipynb"],
        cwd=repo / "notebooks", env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = _outputs_text(repo / "notebooks" / "executed.ipynb")
    assert "Studying the packaged reference weights of googlenet_cifar_small" in text
    assert "no checkpoint from notebook 04" in text
    assert set(repo.rglob("*.pt")) == shipped, "the notebook wrote a checkpoint"
    assert not (repo / "notebooks" / "checkpoints").exists()
