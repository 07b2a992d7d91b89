# `make demo` and `make test` each set everything up on a fresh machine.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-full lint format bench-attention bench-topk gpu-session-dry-run clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || "$$(sh tools/find_python.sh)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,plot]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m phoenix_eqx.cli demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two workers: most tests wait on single-threaded compilation, so both CPU cores get used.
# Compilation is most of the suite's time, so it runs at XLA's lowest CPU backend
# optimisation (a third less in all); the tests marked `default_codegen` (bit-for-bit
# comparisons of separately compiled programs, and compute-bound ones) run as users do.
FAST_COMPILE := --xla_backend_optimization_level=0
test: lint
	XLA_FLAGS="$(FAST_COMPILE)" $(BIN)/python -m pytest -q -n 2 -m "not default_codegen"
	$(BIN)/python -m pytest -q -n 2 -m default_codegen

# More hypothesis examples than CI runs; for hand runs before a release.
test-full: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -n 2

bench-attention: $(STAMP)
	$(BIN)/python -m benchmarks.attention

bench-topk: $(STAMP)
	$(BIN)/python -m benchmarks.topk

# The GPU session's whole code path on the CPU (kernels interpreted, tiny shapes); on the GPU
# machine run `bash tools/gpu_session.sh` instead.
gpu-session-dry-run: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_session --dry-run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# MovieLens-100K under the published leave-two-out protocol on the CPU, 10-minute fit budget
# (downloads the data on first use). Outputs go to bench_results/ (git-ignored).
train: $(STAMP)
	mkdir -p bench_results
	$(BIN)/python -m phoenix_eqx.train --dataset movielens-100k --budget 600 \
		--metrics-json bench_results/train_metrics.json
	$(BIN)/python -m benchmarks.report bench_results/train_metrics.json \
		--plot bench_results/validation_hr.png
