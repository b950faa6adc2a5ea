# Fresh machine: `make demo` (train the channel-adaptive model briefly, print its table) and `make test`.
PYTHON ?= python3
DATA_ROOT ?=
DEMO_DATA := $(if $(DATA_ROOT),$(DATA_ROOT),synthetic)
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench results gpu-check

install:
	$(PYTHON) -m pip install -q -r requirements.txt

demo: install
	$(PYTHON) train_dw.py --model dwg --backbone small --data-root $(DEMO_DATA) --img-size 32 \
		--epochs 6 --batch-size 64 --workers 1 --limit 3000 --out $(DEMO_OUT) --overwrite
	$(PYTHON) test_dw.py --checkpoint $(DEMO_OUT)/best.pt --data-root $(DEMO_DATA) --workers 1 --complexity

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) -m bench

results: install
	$(PYTHON) -m experiments.results --update-docs

gpu-check: install
	$(PYTHON) -m gpu_check
