# Two commands on a fresh clone: `make demo` and `make test`. Each creates the
# virtual environment .venv (with python3) and installs dlcore with the extras it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ENGINE ?=

.PHONY: demo test test-fast test-cudasim ptx-report lint bench parity clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.lint-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/python -m dlcore demo

# `make test ENGINE=numpy` runs the engine-parametrized tests on one engine only.
test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(if $(ENGINE),--engine $(ENGINE))

# Every test that runs CUDA kernels, the model-level ones included: in Numba's CUDA
# simulator where there is no GPU (hours on 2 cores; test_models and test_saving
# alone take about 20 minutes).
test-cudasim: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m cudasim --full-simulation

# Registers, shared memory and spills of every kernel for sm_80 and sm_90 (kernels/README.md).
ptx-report: $(VENV)/.test-installed
	env -u NUMBA_ENABLE_CUDASIM $(BIN)/python -m dlcore.kernels.ptx_report --markdown

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -x -m "not slow" --engine numpy

# Compare dlcore's numbers with Keras 3 (JAX backend), in a separate environment.
parity: pyproject.toml
	test -x .venv-parity/bin/python || $(PYTHON) -m venv .venv-parity
	.venv-parity/bin/python -m pip install --quiet -e ".[parity]"
	KERAS_BACKEND=jax .venv-parity/bin/python -m pytest tests/test_keras_parity.py

lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dlcore backends

clean:
	rm -rf $(VENV) .venv-parity build *.egg-info .pytest_cache .ruff_cache .mypy_cache .benchmarks

bench: $(VENV)/.test-installed
	$(BIN)/python -m pytest bench --benchmark-enable --benchmark-only \
		--benchmark-columns=min,median,max
