# Quick start: `make demo` (offline synthetic challenge, end to end), `make test`, `make lint`.
PYTHON ?= python3
DATA ?= data/demo
CACHE ?= cache/demo
REPORT ?= report/demo
TRACK ?= purchase100
# CPU threads per torch process (empty: torch's default, one per core). On a machine shared with
# other jobs, THREADS=1 or 2 is much faster (docs/flags_threads.md).
THREADS ?=
THREADS_FLAG := $(if $(THREADS),--threads $(THREADS))
# Test and lint tools (not runtime requirements, so not in requirements.txt).
DEV_TOOLS ?= pytest ruff
DEPS := .make/deps

.PHONY: install demo compare test test-slow lint format bench gpu-check gpu-wheels clean

# Installs only when requirements.txt changed since the last install (or never ran here).
$(DEPS): requirements.txt
	$(PYTHON) -m pip install -q -r requirements.txt $(DEV_TOOLS)
	mkdir -p "$(dir $@)" && touch "$@"

install: $(DEPS)

demo: $(DEPS)
	$(PYTHON) download_files.py --challenge $(TRACK) --data-dir "$(DATA)" --synthetic $(THREADS_FLAG)
	$(PYTHON) save_preds.py --challenge $(TRACK) --data-dir "$(DATA)" --cache-dir "$(CACHE)" $(THREADS_FLAG)
	$(PYTHON) run_lira_mia.py --challenge $(TRACK) --data-dir "$(DATA)" --cache-dir "$(CACHE)" --report-dir "$(REPORT)" --global_variance --evaluate
	$(PYTHON) save_zip.py --challenge $(TRACK) --data-dir "$(DATA)" --output "$(DATA)/predictions_$(TRACK).zip"

compare: $(DEPS)
	$(PYTHON) run_lira_mia.py --challenge $(TRACK) --data-dir "$(DATA)" --cache-dir "$(CACHE)" --report-dir "$(REPORT)" --compare

# The default suite (tests marked slow are left out; see pyproject.toml).
test: $(DEPS)
	$(PYTHON) -m pytest -q tests

# Only the slow tests (exit code 5, "no tests collected", is not a failure).
test-slow: $(DEPS)
	$(PYTHON) -m pytest -q -m slow tests || [ $$? -eq 5 ]

lint: $(DEPS)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: $(DEPS)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench: $(DEPS)
	$(PYTHON) bench/bench_lira.py

# The prepared GPU check (docs/gpu.md): CUDA tests, bench_train at MICO's sizes, save_preds
# throughput; one results file in report/gpu_check/. GPU_CHECK_ARGS="--device cpu --tiny" rehearses it.
# It installs only the wheels pinned in bench/gpu_wheels.txt, offline from .whl/ when that exists.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# The wheels the GPU image lacks (bench/gpu_wheels.txt, pinned and hashed) for its Python 3.12 on
# manylinux x86-64, from PyPI into the ignored .whl/ (run it where pip reaches PyPI).
GPU_WHEEL_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_WHEEL_PLATFORMS)) -d .whl -r bench/gpu_wheels.txt
	ls -l .whl

clean:
	rm -rf "$(DATA)" "$(CACHE)" "$(REPORT)"
