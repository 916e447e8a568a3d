# One-command setup: every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint unit notebooks lab course set-repo release clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off -e ".[dev]"
	touch $(STAMP)

## make test: lint, unit tests, then every notebook under nbval in quick mode.
test: lint unit notebooks

lint: install
	$(BIN)/ruff check .

unit: install
	$(BIN)/python -m pytest tests

notebooks: install
ifneq ($(wildcard notebooks/*.ipynb),)
	INCEPTION_QUICK=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env notebooks/
else
	@echo "no notebooks yet: nothing for nbval to run"
endif

## make lab: JupyterLab on the course.
lab: install
	$(BIN)/jupyter lab notebooks/

## make course: run every notebook headless, in order, in full mode, saving the outputs.
## The notebooks that study a trained model study the packaged reference weights (not 04's run).
course: install
	for nb in notebooks/[0-9][0-9]_*.ipynb; do \
	  echo "== $$nb"; \
	  INCEPTION_QUICK=0 INCEPTION_STUDY=reference $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=-1 "$$nb" || exit 1; \
	  $(BIN)/jupyter nbconvert --to notebook --inplace \
	    --CoalesceStreamsPreprocessor.enabled=True "$$nb" || exit 1; \
	done

## make set-repo REPO=owner/name: point the Colab badges and setup cells at your fork.
## The address lives in pyproject.toml ([project.urls] Repository); this rewrites every copy.
OLD_REPO := $(shell sed -n 's|^Repository = "https://github.com/\(.*\)"|\1|p' pyproject.toml)
set-repo:
	@test -n "$(REPO)" || { echo "usage: make set-repo REPO=owner/name"; exit 2; }
	sed -i 's|$(OLD_REPO)|$(REPO)|g' pyproject.toml README.md notebooks/*.ipynb
	@echo "now pointing at https://github.com/$(REPO)"

## make release: tag this commit v<version> (pyproject.toml), the tag the Colab badges and setup
## cells install from. Bump the version in pyproject.toml, README and notebooks first.
VERSION := $(shell sed -n 's|^version = "\(.*\)"|\1|p' pyproject.toml)
release:
	@git diff --quiet HEAD || { echo "commit or stash your changes first"; exit 1; }
	$(BIN)/python -m pytest -q tests/test_notebooks.py -k "badge"
	git tag -a "v$(VERSION)" -m "release v$(VERSION)"
	@echo "tagged v$(VERSION); publish it with: git push origin v$(VERSION)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
