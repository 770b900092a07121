# Two entry points (README Quick start): `make demo` and `make test`.
# Both create .venv if missing, install torch==2.13.0 FIRST (an unpinned torch would pull CUDA wheels),
# then the project with its extras (EXTRAS: test for `make test`, none for `make demo`, which needs no test
# tools), and check that nothing upgraded torch.
# `make install-nnunet` (or EXTRAS=test,nnunet) adds nnU-Net v2 for tests/ecosystem and benchmarks/bench_nnunet.py;
# CI (.ci/run) runs `make test EXTRAS=test,nnunet`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
SPEC := $(if $(EXTRAS),.[$(EXTRAS)],.)

.PHONY: install install-nnunet demo test lint clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '$(SPEC)'
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else 'torch was changed to ' + torch.__version__ + ': reinstall $(TORCH)')"
	touch $(STAMP)

install: $(STAMP)

install-nnunet:
	$(MAKE) install EXTRAS=test,nnunet

demo:
	$(MAKE) install EXTRAS=
	$(BIN)/styleseg demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	@echo "benchmarks: see BENCHMARKS.md for the command of each"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
