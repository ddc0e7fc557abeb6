# catalens — the two commands a newcomer needs:  `make run`  (set up + start the local stack)  and  `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR ?= build/models
MODEL_STAMP := $(MODEL_DIR)/.built

.PHONY: setup run test lint unit integration e2e model bench clean

setup: $(STAMP) $(MODEL_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || "$$(infra/find-python312)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

$(MODEL_STAMP): $(STAMP) $(shell find shared/catalens/model -name '*.py' 2>/dev/null)
	$(VENV)/bin/catalens model build --out $(MODEL_DIR)
	@touch $@

model: $(MODEL_STAMP)

run: setup
	$(VENV)/bin/catalens local $(if $(CATALOG),--catalog "$(CATALOG)") $(if $(FRESH),--fresh)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest tests/unit -p socket --disable-socket --allow-unix-socket -q
	$(VENV)/bin/pytest tests/integration tests/e2e -q

unit: setup
	$(VENV)/bin/pytest tests/unit -p socket --disable-socket --allow-unix-socket -q

integration: setup
	$(VENV)/bin/pytest tests/integration -q

e2e: setup
	$(VENV)/bin/pytest tests/e2e -q

clean:
	rm -rf build .aws-sam .pytest_cache .ruff_cache
