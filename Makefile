# Weight Separation toolkit.
#
#   make setup   .venv/ with every dependency, and the custom ops built
#   make test    setup, then the test suite
#   make demo    setup, then the whole pipeline on built-in synthetic data (demo_out/)
#   make bench   the CPU benchmarks of BENCHMARKS.md
#   make clean   built libraries (keeps .venv/)
#
# TF_PACKAGE picks the TensorFlow build: the CPU wheel by default; on a CUDA machine
# `make setup TF_PACKAGE='tensorflow[and-cuda]==2.21.0'` (the op then builds its CUDA kernel).

PYTHON ?= python3
TF_PACKAGE ?= tensorflow-cpu==2.21.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean ops

setup: $(STAMP) ops

# Reinstall only when the requirements or the TensorFlow choice change.
$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TF_PACKAGE)" -r requirements.txt
	touch $@

ops: $(STAMP)
	$(MAKE) --no-print-directory -C custom_ops PYTHON=$(abspath $(PY))

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) demo.py $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/bench_method.py
	$(PY) benchmarks/bench_loss.py
	$(PY) benchmarks/bench_switch.py
	$(PY) benchmarks/bench_formation.py
	$(PY) benchmarks/bench_startup.py -state_dir=bench_out/method/state_original

clean:
	$(MAKE) --no-print-directory -C custom_ops clean
