# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv; where no NVIDIA GPU is present, torch is the CPU build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0

.PHONY: venv demo demo-model test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Install torch first: a bare `torch` requirement would pull a multi-GB CUDA build on CPU machines.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q torch; \
	else \
		$(BIN)/pip install -q $(TORCH_CPU) || $(BIN)/pip install -q $(TORCH_CPU) --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

# Trains the shipped demo model (hours on 2 CPU cores; docs/training.md) and installs it. Continues the
# run a session committed in model/weights/demo_run (run E) and saves its state back there; commit it.
demo-model: $(STAMP)
	$(BIN)/python -m jobs.demo_model --resume-from model/weights/demo_run --save-state model/weights/demo_run --install

# Everything (CI: .ci/run), then the 15 slowest tests.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# Skips the tests marked slow: those that start Ray, a subprocess or a server (tests/conftest.py); one
# pytest-xdist worker per core (none of these tests start Ray, so they can run side by side).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --durations=15

bench: $(STAMP)
	$(BIN)/python -m bench.bench_model --ablations
	$(BIN)/python -m bench.bench_train
	$(BIN)/python -m bench.bench_signal
	$(BIN)/python -m bench.bench_pipeline
	$(BIN)/python -m bench.bench_decode
	$(BIN)/python -m bench.bench_prepare_numerics
	$(BIN)/python -m bench.bench_scale
	$(BIN)/python -m bench.bench_tables
	$(BIN)/python -m bench.capacity

clean:
	rm -rf $(VENV) demo_output demo_model_output bench_output
