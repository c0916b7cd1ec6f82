# Chicago crime MLOps platform. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
PYTEST    := $(VENV)/bin/pytest
APT_PKGS  := postgresql redis-server
BROWSER_PKGS := chromium chromium-driver
DATA      ?=
# Folder of real portal exports used by the tests (served by the Socrata replay server).
TEST_DATA ?= ../shared/data/chicago
MONTH     ?=
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---------------------------------------------------------------------------------------------
# Native platform (no Docker): everything on 127.0.0.1 under supervisord, state in .local/
# ---------------------------------------------------------------------------------------------
.PHONY: install-native
install-native: $(VENV)/.installed ## Install system packages (apt), the pinned venv, .env with generated secrets, the service user
	@dpkg -s $(APT_PKGS) >/dev/null 2>&1 || { \
	  echo "installing $(APT_PKGS) (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; }
	@# Debian starts its own cluster/server on install; the platform runs its own copies.
	@-pg_ctlcluster 15 main stop >/dev/null 2>&1; service redis-server stop >/dev/null 2>&1; true
	@# .env (git-ignored, mode 600) from .env.example, every empty secret generated.
	@$(PY) scripts/gen_secrets.py .env
	@# As root, the services run as an unprivileged system user.
	@$(PY) -m chicago_crime.devtools.stack prepare
	@# Strip notebook outputs on commit (.gitattributes names the filter; git config is per clone).
	@if [ -d .git ]; then $(VENV)/bin/nbstripout --install; fi

# Every package (setuptools, the build backend, too) comes from requirements.lock and must match
# one of its SHA-256 hashes; the project itself is built without fetching anything else.
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

LOCK_VENV ?= .lock-venv
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
  --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
.PHONY: lock
lock: ## Regenerate requirements.lock from requirements.in, with the hash of every file the indexes offer
	@test -x $(LOCK_VENV)/bin/pip-compile || { python3 -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/pip install -q pip-tools==7.6.2; }
	$(PIP_COMPILE) --output-file requirements.lock requirements.in
	@# One lock per image, the same versions (constrained by requirements.in) and the same hashes.
	$(PIP_COMPILE) -c requirements.in --extra serve --output-file dockerfiles/fastapi/requirements.lock \
	  pyproject.toml dockerfiles/build.in
	$(PIP_COMPILE) -c requirements.in --extra airflow --output-file dockerfiles/airflow/requirements.lock \
	  pyproject.toml dockerfiles/airflow/requirements.in dockerfiles/build.in
	$(PIP_COMPILE) -c requirements.in --output-file dockerfiles/mlflow/requirements.lock \
	  dockerfiles/mlflow/requirements.in

.PHONY: install-browser
install-browser: ## Install Debian chromium for the real-browser checks
	@dpkg -s $(BROWSER_PKGS) >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PKGS) >/dev/null; }

.PHONY: local-up
local-up: install-native ## Start the platform natively (DATA=folder of exports | DATA=portal; default: the remembered source)
	$(PY) -m chicago_crime.devtools.stack up $(if $(DATA),--data "$(DATA)")

.PHONY: local-status
local-status: ## One line per native service (readiness, what is missing, recent crashes); non-zero exit if any is not ready
	@$(PY) -m chicago_crime.devtools.stack status

.PHONY: local-down
local-down: ## Stop every native service (data is kept)
	@$(PY) -m chicago_crime.devtools.stack down

.PHONY: local-wipe
local-wipe: ## Stop the native stack and delete its data (.local/)
	@$(PY) -m chicago_crime.devtools.stack down --wipe

.PHONY: local-restart
local-restart: ## Restart application services after a code change (SERVICES="api airflow-worker"; the API without downtime)
	@$(PY) -m chicago_crime.devtools.stack restart $(SERVICES)

.PHONY: local-logs
local-logs: ## Tail of every native service log (.local/logs/)
	@$(PY) -m chicago_crime.devtools.stack logs

.PHONY: local-env
local-env: ## The environment a native program gets, secrets masked (PROGRAM=airflow-worker)
	@$(PY) -m chicago_crime.devtools.stack env $(PROGRAM)

# ---------------------------------------------------------------------------------------------
# Docker Compose stack (production form); see docs/docker.md
# ---------------------------------------------------------------------------------------------
PROFILE ?= all
SERVICE ?=
COMPOSE ?= docker compose
DC      := $(COMPOSE) --project-name chicago-crime --file docker-compose.yaml
define open_url
	@set -a; source ./.env; set +a; host=$${BIND_HOST/0.0.0.0/127.0.0.1}; url="http://$$host:$${$(1)}"; \
	  echo "$(2): $$url  $(3)"; \
	  if command -v xdg-open >/dev/null 2>&1 && [ -n "$${DISPLAY}$${WAYLAND_DISPLAY}" ]; then xdg-open "$$url" >/dev/null 2>&1 & \
	  elif command -v open >/dev/null 2>&1 && [ "$$(uname -s)" = Darwin ]; then open "$$url"; fi
endef

.PHONY: install up down restart clean logs status airflow mlflow minio api check-compose
install: ## Prepare Docker: fill empty secrets in .env, AIRFLOW_UID (Linux), ./airflow folders
	@python3 scripts/gen_secrets.py .env --airflow-uid auto
	@mkdir -p airflow/logs airflow/plugins
up: ## Build and start the Compose stack (PROFILE=all) and wait until every service is healthy
	$(DC) --profile $(PROFILE) up -d --build --wait
down: ## Stop and remove the Compose containers (volumes/data are kept)
	$(DC) --profile '*' down
restart: ## Restart the Compose stack (down + up)
	@$(MAKE) --no-print-directory down
	@$(MAKE) --no-print-directory up
clean: ## Delete this project's Compose containers, networks and volumes (nothing else)
	$(DC) --profile '*' down --volumes --remove-orphans
logs: ## Follow the Compose logs (SERVICE=airflow-worker for one service)
	$(DC) --profile '*' logs --follow --tail=200 $(SERVICE)
status: ## State and health of every Compose container
	$(DC) --profile '*' ps --all
airflow: ## Airflow UI URL (and open it)
	$(call open_url,AIRFLOW_PORT,Airflow,(login: $${AIRFLOW_ADMIN_USER} / see AIRFLOW_ADMIN_PASSWORD in .env))
mlflow: ## MLflow UI URL (and open it)
	$(call open_url,MLFLOW_PORT,MLflow,)
minio: ## MinIO console URL (and open it)
	$(call open_url,MINIO_PORT_UI,MinIO console,(login: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in .env))
api: ## Model API Swagger UI URL (and open it)
	$(call open_url,FASTAPI_PORT,Model API,(docs: /docs))
check-compose: $(VENV)/.installed ## Static checks of the Compose stack (no Docker engine needed)
	$(PY) scripts/check_compose.py

# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------
.PHONY: test
test: install-browser ## Install, start the native stack (replaying TEST_DATA), run every test
	$(MAKE) --no-print-directory local-up DATA="$(TEST_DATA)"
	CHICAGO_DATA_DIR="$(TEST_DATA)" $(PYTEST) $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: install-browser ## End-to-end journey + real-browser checks on the native stack (replaying TEST_DATA)
	$(MAKE) --no-print-directory local-up DATA="$(TEST_DATA)"
	CHICAGO_DATA_DIR="$(TEST_DATA)" $(PYTEST) -m e2e $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install-native ## Fast unit tests only (no services needed)
	$(PYTEST) -m "not integration and not e2e and not security" $(PYTEST_ARGS)

.PHONY: test-security
test-security: install-native ## The hostile suite against the native stack (replaying TEST_DATA)
	$(MAKE) --no-print-directory local-up DATA="$(TEST_DATA)"
	CHICAGO_DATA_DIR="$(TEST_DATA)" $(PYTEST) -m security $(PYTEST_ARGS)

.PHONY: demo
demo: install-native ## The whole journey: start, ETL, training, served champion (DATA=exports folder, MONTH=YYYY-MM)
	$(MAKE) --no-print-directory local-up DATA="$(DATA)"
	$(PY) -m chicago_crime.devtools.demo $(if $(DATA),--data "$(DATA)") --month "$(MONTH)"

.PHONY: train rollback champion
train: ## Train, register and gate a model for MONTH=YYYY-MM outside Airflow (same code path)
	$(PY) -m chicago_crime.cli train --month $(MONTH)
rollback: ## Move the champion alias back to the previous champion
	$(PY) -m chicago_crime.cli rollback
champion: ## Print the current champion
	$(PY) -m chicago_crime.cli champion

.PHONY: bench
bench: ## Run every benchmark (prints figures; the pipeline ones need the native stack)
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_features.py --runs 2
	$(PY) bench/bench_train.py
	$(PY) bench/bench_api.py --model features
	$(PY) bench/bench_pipeline.py --month 2018-06 --to-champion
	$(PY) bench/bench_recovery.py

.PHONY: notebooks
notebooks: install-native ## Open the notebooks in JupyterLab on the venv kernel (stack up; NOTEBOOK_MONTH=YYYY-MM)
	$(VENV)/bin/jupyter lab notebooks/

.PHONY: test-notebooks
test-notebooks: ## Execute both notebooks against the running stack (copies with outputs in artifacts/notebooks/)
	NOTEBOOK_MONTH="$(or $(MONTH),2018-06)" $(PYTEST) tests/e2e/test_notebooks.py $(PYTEST_ARGS)

.PHONY: replay
replay: install-native ## Serve a folder of portal exports as a Socrata API (DATA=../shared/data/chicago)
	$(PY) -m chicago_crime.devtools.replay --data "$(or $(DATA),$(TEST_DATA))" --port $(or $(REPLAY_PORT),8765)

.PHONY: lint
lint: ## ruff on the whole repository
	$(VENV)/bin/ruff check .
