# Weight Separation toolkit.
#
#   make setup   .venv/ with every dependency, and the custom ops built
#   make test    setup, then the test suite (the C runtime's tests included)
#   make runtime       the C runtime's tool, runtime_c/build/wsrun
#   make runtime-test  setup, then only the C runtime's tests (host and Cortex-M under QEMU)
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

.PHONY: setup test demo bench clean ops runtime runtime-test mcu-tools

setup: $(STAMP) ops mcu-tools

# Reinstall only when the requirements or the TensorFlow choice change.
$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TF_PACKAGE)" -r requirements.txt
	touch $@

ops: $(STAMP)
	$(MAKE) --no-print-directory -C custom_ops PYTHON=$(abspath $(PY))

test: setup runtime
	$(PY) -m pytest -q tests

runtime:
	$(MAKE) --no-print-directory -C runtime_c all

runtime-test: setup runtime
	$(PY) -m pytest -q tests/test_runtime_c.py

# The Cortex-M cross compiler, newlib and qemu-system-arm, from Debian's packages where missing.
mcu-tools:
	@tools/install_mcu_tools.sh

demo: setup
	$(PY) demo.py $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/bench_method.py
	$(PY) benchmarks/bench_loss.py
	$(PY) benchmarks/bench_switch.py
	$(PY) benchmarks/bench_formation.py
	$(PY) benchmarks/bench_startup.py -state_dir=bench_out/method/state_original
	$(PY) benchmarks/bench_runtime_c.py

clean:
	$(MAKE) --no-print-directory -C custom_ops clean
	$(MAKE) --no-print-directory -C runtime_c clean
