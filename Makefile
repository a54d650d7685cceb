# Two commands do all their own set-up from a fresh clone: `make demo` and `make test`.
# The venv gets the exact versions of constraints.txt; pyproject.toml states the ranges.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := faiss,dev,dist,docs

.PHONY: demo demo-patchcore test test-slow test-gpu lint docs clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python main.py --parameters_path configurations/synthetic/demo.json --seed 0 --overwrite

demo-patchcore: $(STAMP)
	$(BIN)/python main.py --parameters_path configurations/synthetic/demo_patchcore.json --seed 0 --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not realdata" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow or realdata" -q

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -q

lint: $(STAMP)
	$(BIN)/ruff check clad tests main.py
	$(BIN)/ruff format --check clad tests main.py
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
