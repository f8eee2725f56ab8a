# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGEKD := $(VENV)/bin/edgekd
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CONFIG ?= configs/fashion_mnist.yaml
JOBS   ?= logical  # pytest-xdist workers: one per CPU (make test JOBS=1 runs in one process)
ARGS   ?=

.PHONY: setup data run test bench smoke clean help

help:
	@echo "make run    set up, then the whole pipeline on Fashion-MNIST ($(CONFIG))"
	@echo "make test   set up, then the test suite"
	@echo "make bench  set up, then the benchmarks (long)"

# constraints.txt pins the tested versions (torch from this machine's disk); pyproject.toml keeps ranges.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $@

setup: $(VENV)/.installed data

# Debian ships the official Fashion-MNIST files; install them when missing and apt is usable (root).
data:
	@if [ ! -f "$(FMNIST)" ] && [ -z "$$EDGEKD_DATA" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt-get could not install dataset-fashion-mnist; edgekd will try a torchvision download"; \
	  else echo "Fashion-MNIST not found at $(FMNIST); set EDGEKD_DATA or data.root, or let torchvision download it"; fi; \
	fi

run: setup
	$(EDGEKD) run --config $(CONFIG) $(ARGS)

smoke: setup
	$(EDGEKD) run --config configs/smoke.yaml $(ARGS)

test: setup
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile --durations=25 $(ARGS)  # 25 slowest listed: the 20-minute budget in sight

bench: setup
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev,bench]'
	$(PY) benchmarks/robustness.py
	$(PY) benchmarks/int8_speedup.py
	$(EDGEKD) run --config configs/fashion_mnist.yaml   # stages already up to date are skipped
	$(PY) benchmarks/quantization.py --run export/fashion_mnist --tag mobilenet_v2_0.5

clean:
	rm -rf $(VENV) export/*/ .pytest_cache
