# catalens — the two commands a newcomer needs:  `make run`  (set up + start the local stack)  and  `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR ?= build/models
MODEL_STAMP := $(MODEL_DIR)/.built

.PHONY: setup run test lint unit integration e2e model bench clean deploy-checks sam-build deploy smoke chromium

setup: $(STAMP) $(MODEL_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || "$$(infra/find-python312)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

$(MODEL_STAMP): $(STAMP) $(shell find shared/catalens_tools/model shared/catalens/model -name '*.py' -o -name '*.json' 2>/dev/null)
	$(VENV)/bin/catalens model build --out $(MODEL_DIR)
	@touch $@

model: $(MODEL_STAMP)

run: setup
	$(VENV)/bin/catalens local $(if $(CATALOG),--catalog "$(CATALOG)") $(if $(FRESH),--fresh)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The e2e browser test drives Debian's Chromium (Playwright's own browser download is not used): installed here when
# missing and we may (root with apt-get), otherwise make test stops before any setup, naming the command.
CHROMIUM ?= /usr/bin/chromium
export CATALENS_CHROMIUM := $(CHROMIUM)

chromium:
	@test -x "$(CHROMIUM)" || { \
	  if [ "$(CHROMIUM)" = /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Chromium for the browser test (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  fi; \
	  test -x "$(CHROMIUM)" || { \
	    echo "make test needs Chromium at $(CHROMIUM): sudo apt-get install -y chromium (or CHROMIUM=/path/to/it)" >&2; \
	    exit 1; }; }

test: chromium setup lint deploy-checks
	$(VENV)/bin/pytest tests/unit --disable-socket --allow-unix-socket -q
	$(VENV)/bin/pytest tests/integration tests/e2e -q

# The quick loop: the unit tier without the tests marked slow (graph builds, the lever study); make test runs all.
unit: setup
	$(VENV)/bin/pytest tests/unit --disable-socket --allow-unix-socket -q -m "not slow"

integration: setup
	$(VENV)/bin/pytest tests/integration -q

e2e: chromium setup
	$(VENV)/bin/pytest tests/e2e -q

clean:
	rm -rf build .aws-sam .pytest_cache .ruff_cache

# ---- deploy path: template checks, the zip build, deploy, smoke test (README "Deploy to AWS").
# aws-sam-cli pins boto3 exactly and checkov pins much else, so each gets a virtualenv of its own.
SAM_VENV ?= .venv-sam
CHECKOV_VENV ?= .venv-checkov
SAM := $(SAM_VENV)/bin/sam
SAM_CONFIG := $(CURDIR)/infra/samconfig.toml
export SAM_CLI_TELEMETRY := 0

$(SAM_VENV)/.installed: infra/requirements-sam.txt
	@test -x $(SAM_VENV)/bin/python || "$$(infra/find-python312)" -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r infra/requirements-sam.txt
	@touch $@

$(CHECKOV_VENV)/.installed: infra/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || "$$(infra/find-python312)" -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r infra/requirements-checkov.txt
	@touch $@

# sam validate --lint (no credentials needed) and checkov over the locally transformed template; offline.
deploy-checks: $(STAMP) $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed
	$(VENV)/bin/catalens template transform --out build/template.transformed.json
	$(SAM) validate --lint --region eu-west-1 --template template.yaml
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --config-file infra/checkov.yaml --skip-download \
		--file build/template.transformed.json

# sam build of every zip function and layer (the builder image needs Docker: left out), then the 250 MB check
# and an import of each handler from nothing but its layers and the runtime's boto3.
sam-build: $(STAMP) $(SAM_VENV)/.installed
	$(VENV)/bin/catalens template zip-only --out build/template.zip-only.json
	PATH="$$(dirname "$$(infra/find-python312)"):$$PATH" $(SAM) build --config-file $(SAM_CONFIG) \
		--template build/template.zip-only.json --base-dir .
	$(PY) infra/size_check.py --build-dir .aws-sam/build
	$(PY) infra/layer_import_check.py --build-dir .aws-sam/build

# Everything, builder image included (needs Docker and AWS credentials); GUIDED=1 asks for the settings.
deploy: $(STAMP) $(SAM_VENV)/.installed
	PATH="$$(dirname "$$(infra/find-python312)"):$$PATH" $(SAM) build --config-file $(SAM_CONFIG)
	$(PY) infra/size_check.py --build-dir .aws-sam/build
	$(SAM) deploy --config-file $(SAM_CONFIG) $(if $(GUIDED),--guided)

smoke: $(STAMP)
	$(VENV)/bin/catalens smoke --stack $(or $(STACK),catalens)
