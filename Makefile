# Two entry points (README Quick start): `make demo` and `make test`.
# Both create .venv if missing, install torch==2.13.0 FIRST (an unpinned torch would pull CUDA wheels),
# then the project with its test extras, and check that nothing upgraded torch.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else 'torch was changed to ' + torch.__version__ + ': reinstall $(TORCH)')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/styleseg demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	@echo "benchmarks: see BENCHMARKS.md for the command of each"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
