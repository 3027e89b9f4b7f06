# One command to set up and run the demo, one to run the tests (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU build this project is tested with; on a GPU machine install
# your CUDA build of torch into the venv first and `make` keeps it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-all bench clean

$(BIN)/controlnext-video: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[all,test]"
	touch $@

setup: $(BIN)/controlnext-video

demo: setup
	$(BIN)/controlnext-video demo

test: setup
	$(BIN)/python -m pytest

# Everything that needs no GPU: also the end-to-end tests across processes (a Prefect server,
# process workers, CLI subprocesses), the heavy computations and the browser test (the Prefect UI
# in headless Chromium). What CI runs.
test-all: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" --durations=30

clean:
	rm -rf $(VENV) build *.egg-info
