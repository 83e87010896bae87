# spa — the two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPA := $(VENV)/bin/spa
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test venv test-venv bench docs clean

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test,docs]'
	touch $@

venv: $(VENV)/.runtime
test-venv: $(VENV)/.test

demo: $(VENV)/.runtime
	mkdir -p $(DEMO_OUT)
	$(SPA) analyze models/demo_cnn.onnx
	$(SPA) prune models/demo_cnn.onnx --ratio 0.5 -o $(DEMO_OUT)/demo_cnn.pruned.onnx \
		--emit-masked $(DEMO_OUT)/demo_cnn.masked.onnx --report $(DEMO_OUT)/report.json --force
	$(SPA) verify models/demo_cnn.onnx $(DEMO_OUT)/demo_cnn.pruned.onnx --masked $(DEMO_OUT)/demo_cnn.masked.onnx
	$(SPA) bench models/demo_cnn.onnx $(DEMO_OUT)/demo_cnn.pruned.onnx --provider auto --threads 1 \
		--json $(DEMO_OUT)/bench.json
	@echo "report: $(DEMO_OUT)/report.json, benchmark: $(DEMO_OUT)/bench.json"

test: $(VENV)/.test
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check spa tests tools
	$(VENV)/bin/mypy spa
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(PY) tools/bench_prune_speed.py

docs: $(VENV)/.test
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
