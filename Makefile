# Two commands on a fresh clone: `make demo` and `make test`. Each creates the
# virtual environment .venv (with python3) and installs dlcore with the extras it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ENGINE ?=

.PHONY: demo test test-fast test-cudasim ptx-report lint bench bench-compare bench-report parity \
	gpu-check clean fuzz soak

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

# Compare dlcore's numbers with Keras 3 (JAX backend, pinned in the parity extra), in a
# separate environment; CI runs it. DLCORE_REQUIRE_KERAS=1 turns the parity modules' skip
# (where Keras cannot be imported) into a failure.
PARITY_VENV := .venv-parity
# every tests/test_keras_parity*.py module: each compares one part of dlcore with Keras
PARITY_TESTS := $(sort $(wildcard tests/test_keras_parity*.py))

$(PARITY_VENV)/bin/python:
	$(PYTHON) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/python -m pip install --quiet --upgrade pip

$(PARITY_VENV)/.parity-installed: pyproject.toml | $(PARITY_VENV)/bin/python
	$(PARITY_VENV)/bin/python -m pip install --quiet -e ".[parity]"
	touch $@

parity: $(PARITY_VENV)/.parity-installed
	DLCORE_REQUIRE_KERAS=1 KERAS_BACKEND=jax $(PARITY_VENV)/bin/python -m pytest $(PARITY_TESTS)

# Long fuzzing of load_model (tests/test_fuzz_model_files.py): FUZZ_EXAMPLES random damaged
# or crafted files per strategy; the default test run uses a fixed, derandomized budget.
FUZZ_EXAMPLES ?= 100000
fuzz: $(VENV)/.test-installed
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_model_files.py

# Memory soak (tests/test_soak.py): SOAK_FITS short fits and SOAK_PREDICTS predicts after a
# warm-up; prints the resident-memory growth per 1,000 calls and fails at 1 KB or more.
SOAK_FITS ?= 2000
SOAK_PREDICTS ?= 100000
soak: $(VENV)/.test-installed
	DLCORE_SOAK=1 SOAK_FITS=$(SOAK_FITS) SOAK_PREDICTS=$(SOAK_PREDICTS) \
		$(BIN)/python -m pytest -q -s -m soak tests/test_soak.py

lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dlcore backends tools

# The first thing to run on a machine with a CUDA GPU (CONTRIBUTING.md, "Running the GPU
# check"): versions, the GPU tests, large shapes, timings, the benchmark and
# compute-sanitizer, within 8 minutes, with the machine's own python3 and no virtual
# environment (nothing can be installed there). Report: $(OUT)/report.md and report.json
# (default gpu-check-out/). GPU_CHECK_ARGS passes options, e.g. "--only probe timings".
# Without a GPU every GPU step is skipped at once.
OUT ?=
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) tools/gpu_check.py $(if $(OUT),--out "$(OUT)") $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-parity build *.egg-info .pytest_cache .ruff_cache .mypy_cache .benchmarks \
		gpu-check-out

# Throughput benchmarks (bench/): one model.fit epoch per engine and case, real sizes, timed.
# On a CPU the large case takes minutes per epoch: BENCH_ARGS="-k 'not large'" leaves it out.
# `make bench` saves the baseline (the numbered history stays in .benchmarks/<machine>/);
# `make bench-compare` fails when an epoch takes more than 11% longer than in the
# baseline (min of the rounds), that is when throughput drops by more than 10%.
BENCH_STORAGE := .benchmarks
BENCH_BASELINE := $(BENCH_STORAGE)/baseline.json
BENCH_ARGS ?=
NO_BASELINE := no baseline in $(BENCH_BASELINE) yet: run 'make bench' first, on this machine, \
	before the change to measure
# pytest-benchmark's own warnings (a baseline from a machine that differs) are shown, not
# raised: the suite turns warnings into errors, which would crash the comparison.
BENCH_TIMED := bench --benchmark-enable --benchmark-only --bench-size=full \
	--benchmark-columns=min,median,max,rounds --benchmark-sort=fullname \
	-W default::pytest_benchmark.logger.PytestBenchmarkWarning

bench: $(VENV)/.test-installed
	mkdir -p $(BENCH_STORAGE)
	$(BIN)/python -m pytest $(BENCH_TIMED) --benchmark-storage=file://$(BENCH_STORAGE) \
		--benchmark-save=baseline --benchmark-json=$(BENCH_BASELINE).partial $(BENCH_ARGS)
	mv $(BENCH_BASELINE).partial $(BENCH_BASELINE)
	@echo "baseline saved in $(BENCH_BASELINE); 'make bench-compare' measures again against it"

bench-compare: $(VENV)/.test-installed
	@test -f $(BENCH_BASELINE) || { echo "$(NO_BASELINE)" >&2; exit 1; }
	$(BIN)/python -m pytest $(BENCH_TIMED) --benchmark-compare=$(BENCH_BASELINE) \
		--benchmark-compare-fail=min:11% $(BENCH_ARGS)

# dlcore against PyTorch and JAX (pinned, CPU wheels here), and the issue's targets:
# exits non-zero when a measured target is not met.
$(VENV)/.peers-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,peers,bench]"
	touch $@

bench-report: $(VENV)/.peers-installed
	mkdir -p $(BENCH_STORAGE)
	$(BIN)/python -m dlcore bench --peers --json $(BENCH_STORAGE)/report.json
