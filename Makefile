# Quick start: `make demo` (offline synthetic challenge, end to end) and `make test`.
PYTHON ?= python3
DATA ?= data/demo
CACHE ?= cache/demo
TRACK ?= purchase100

.PHONY: install demo compare test bench clean

install:
	$(PYTHON) -m pip install -q -r requirements.txt pytest

demo: install
	$(PYTHON) download_files.py --challenge $(TRACK) --data-dir $(DATA) --synthetic
	$(PYTHON) save_preds.py --challenge $(TRACK) --data-dir $(DATA) --cache-dir $(CACHE)
	$(PYTHON) run_lira_mia.py --challenge $(TRACK) --data-dir $(DATA) --cache-dir $(CACHE) --report-dir report/demo --global_variance --evaluate
	$(PYTHON) save_zip.py --challenge $(TRACK) --data-dir $(DATA) --output $(DATA)/predictions_$(TRACK).zip

compare: install
	$(PYTHON) run_lira_mia.py --challenge $(TRACK) --data-dir $(DATA) --cache-dir $(CACHE) --report-dir report/demo --compare

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) bench/bench_lira.py

clean:
	rm -rf $(DATA) $(CACHE) report/demo
