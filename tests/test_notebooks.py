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


def _text(value: str | list[str]) -> str:
    """Notebook JSON stores text as one string or as a list of lines."""
    return "".join(value)


def _source(cell: dict) -> str:
    return _text(cell["source"])


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RELEASE = f"v{PROJECT['version']}"
# What a fresh Colab runtime already has; the setup cell installs every other dependency.
COLAB_PROVIDES = {"torch", "torchvision", "matplotlib", "seaborn", "pandas", "numpy", "tqdm"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_badge_and_setup_from_the_one_repo_url_and_release(path):
    cells = _load(path)["cells"]
    badge = (f"(https://colab.research.google.com/github/{SLUG}/blob/{RELEASE}/notebooks/"
             f"{path.name})")
    assert "colab-badge.svg" in _source(cells[0]) and badge in _source(cells[0])
    assert "What you will learn" in _source(cells[0])
    setup = _source(cells[1])
    assert f'REPO = "{REPO_URL}"' in setup
    assert f'RELEASE = "{RELEASE}"' in setup  # the package of the tag the text was written for
    # --no-deps: never reinstall Colab's torch; the libraries Colab lacks come next, with the
    # same ranges as pyproject.toml, so a dependency added to the package reaches Colab too.
    assert '%pip install -q --no-deps "git+{REPO}@{RELEASE}"' in setup
    extras = set(re.findall(r'%pip install -q ((?:"[^"]+" ?)+)$', setup, flags=re.M)[-1]
                 .replace('"', "").split())
    needed = {r.replace(" ", "") for r in PROJECT["dependencies"]
              if _name(r) not in COLAB_PROVIDES}
    assert needed <= extras, f"{path.name}: the Colab setup misses {needed - extras}"
    assert "inception.seed_everything(" in setup and "describe_runtime()" in setup
    colab_links = set(re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/",
                                 json.dumps(cells)))
    assert colab_links == {SLUG}, f"badges in {path.name} point at {colab_links}"


def test_readme_badges_open_the_release():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/([\w.-]+)/",
                       readme)
    assert links and set(links) == {RELEASE}


def _code(nb: dict) -> str:
    return "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_notebooks_that_train_ask_colab_for_a_gpu(path):
    # A GPU runtime costs a free-tier Colab user quota; a notebook that never trains runs on a CPU.
    nb = _load(path)
    meta = nb["metadata"]
    trains = re.search(r"\bfit\(", _code(nb)) is not None
    assert (meta.get("accelerator") == "GPU") == trains, (
        f"{path.name} {'trains' if trains else 'does not train'}, so it should "
        f"{'' if trains else 'not '}ask Colab for a GPU")
    assert "colab" in meta and meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_lessons_exercises_and_linked_references(path):
    cells = _load(path)["cells"]
    assert "What we learned" in _source(cells[-3])
    exercises = _source(cells[-2])
    assert "Exercises" in exercises and exercises.count("<details>") >= 3
    references = _source(cells[-1])
    assert references.startswith("## References")
    assert "https://arxiv.org/abs/1409.4842" in references  # the paper, in every notebook
    entries = [e for e in references.split("\n- ")[1:]]
    assert entries and all("](http" in e for e in entries), "every reference carries a link"


def test_nbval_check_output_is_explained_once_in_the_first_notebook():
    explained = [p.name for p in NOTEBOOKS if any(
        c["cell_type"] == "markdown" and "NBVAL_CHECK_OUTPUT" in _source(c)
        for c in _load(p)["cells"])]
    assert explained == [NOTEBOOKS[0].name]


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
            assert "image/svg+xml" not in out.get("data", {}), "figures are stored as PNG"


# What a committed output must never show: this machine's paths (a home or work directory, a temp
# file, the kernel's ipykernel_<pid> scratch files that warnings point at).
LOCAL_PATH = re.compile(r"/work/|/home/|/Users/|/root/|/tmp/|/var/folders/|[A-Za-z]:\\Users\\|"
                        r"ipykernel_\d+")
MAX_STREAM_BYTES = 8_000  # printed text per cell: a table or a summary, not a log


def _output_texts(out: dict) -> list[str]:
    """The human-readable text of one output: a stream, an error, or text/* display data."""
    if out["output_type"] == "stream":
        return [_text(out["text"])]
    if out["output_type"] == "error":
        return [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
    return [_text(value) for key, value in out.get("data", {}).items()
            if key.startswith("text/")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_show_no_local_path_no_error_and_no_long_log(path):
    problems = []
    for number, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        for out in outputs:
            if out["output_type"] == "error":
                problems.append(f"cell {number}: error output {out.get('ename')}")
            for text in _output_texts(out):
                if match := LOCAL_PATH.search(text):
                    start = max(0, match.start() - 40)
                    problems.append(f"cell {number}: local path in output: "
                                    f"...{text[start:match.end() + 40]!r}")
        printed = sum(len(_text(o["text"]).encode())
                      for o in outputs if o["output_type"] == "stream")
        if printed > MAX_STREAM_BYTES:
            problems.append(f"cell {number}: {printed:,} bytes of printed text "
                            f"(limit {MAX_STREAM_BYTES:,})")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def _sections(path: Path) -> list[int]:
    markdown = [_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown"]
    return [int(n) for text in markdown for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]


# "section 4" in a notebook's text, or "notebook 01 (section 8)" / "notebook 04, section 3"
SECTION_REF = re.compile(r"(?:\b[Nn]otebook (\d\d)(?: \(|, ))?\bsection (\d+)\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_sections_are_numbered_without_gaps_and_references_to_them_resolve(path):
    # An edit that rewrites the end of a markdown cell can take the next section's heading with
    # it (it happened twice); the text that says "section 4" then points at nothing.
    numbers = _sections(path)
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: sections {numbers}"
    by_number = {p.name[:2]: p for p in NOTEBOOKS}
    text = "\n".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    for notebook, section in SECTION_REF.findall(text):
        target = by_number[notebook] if notebook else path
        assert int(section) in _sections(target), (
            f"{path.name} points at section {section} of {target.name}, which has none")
