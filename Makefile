# Chicago crime MLOps platform. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
PYTEST    := $(VENV)/bin/pytest
APT_PKGS  := postgresql redis-server prometheus prometheus-pushgateway
BROWSER_PKGS := chromium chromium-driver
DATA      ?=
# Folder of real portal exports used by the tests (served by the Socrata replay server).
TEST_DATA ?= ../shared/data/chicago
MONTH     ?=
PYTEST_ARGS ?=
COMPOSE_TEST_ARGS ?=

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
	@# Debian starts its own cluster/servers on install; the platform runs its own copies.
	@-pg_ctlcluster 15 main stop >/dev/null 2>&1; service redis-server stop >/dev/null 2>&1; \
	  service prometheus stop >/dev/null 2>&1; service prometheus-pushgateway stop >/dev/null 2>&1; true
	@# .env (git-ignored, mode 600) from .env.example, every empty secret generated.
	@$(PY) scripts/gen_secrets.py .env
	@# As root, the services run as an unprivileged system user.
	@$(PY) -m chicago_crime.devtools.stack prepare
	@# Strip notebook outputs on commit (.gitattributes names the filter; git config is per clone).
	@if [ -d .git ]; then $(VENV)/bin/nbstripout --install; fi

# Every package (setuptools, the build backend, too) comes from requirements.lock and must match
# one of its SHA-256 hashes; the project itself is built without fetching anything else.
$(VENV)/.installed: requirements.lock dockerfiles/pip/requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# pip first, from its own hashes: the venv's pip (23.2) cannot install a hashed lock whose
	@# packages are also required with extras.
	$(PY) -m pip install -q --require-hashes -r dockerfiles/pip/requirements.lock
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

LOCK_VENV ?= .lock-venv
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
  --generate-hashes --allow-unsafe --no-strip-extras --no-emit-index-url --no-emit-find-links
.PHONY: lock
lock: ## Regenerate requirements.lock from requirements.in, with the hash of every file the indexes offer
	@test -x $(LOCK_VENV)/bin/pip-compile || { python3 -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/pip install -q pip-tools==7.6.2; }
	$(PIP_COMPILE) --output-file requirements.lock requirements.in
	$(PIP_COMPILE) --output-file dockerfiles/pip/requirements.lock dockerfiles/pip/requirements.in
	@# One lock per image, the same versions (constrained by requirements.in) and the same hashes.
	$(PIP_COMPILE) -c requirements.in --extra serve --output-file dockerfiles/fastapi/requirements.lock \
	  pyproject.toml dockerfiles/build.in
	$(PIP_COMPILE) -c requirements.in --extra airflow --output-file dockerfiles/airflow/requirements.lock \
	  pyproject.toml dockerfiles/airflow/requirements.in dockerfiles/build.in
	$(PIP_COMPILE) -c requirements.in --output-file dockerfiles/mlflow/requirements.lock \
	  dockerfiles/mlflow/requirements.in
	$(PIP_COMPILE) -c requirements.in --output-file dockerfiles/jupyter/requirements.lock \
	  pyproject.toml dockerfiles/jupyter/requirements.in dockerfiles/build.in

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
COMPOSE_PROJECT ?= chicago-crime
COMPOSE_FILES ?= docker-compose.yaml
# --build rebuilds images whose sources changed; `make test-compose` passes --no-build (it builds
# and caches them itself).
COMPOSE_BUILD ?= --build
DC      := $(COMPOSE) --project-name $(COMPOSE_PROJECT) $(addprefix --file ,$(COMPOSE_FILES))
# Non-empty while this project's Compose stack runs (a running airflow-worker container): then
# make train / champion / rollback / notebooks run inside the containers instead of the host venv.
COMPOSE_UP = $(shell $(DC) ps --status running --quiet airflow-worker 2>/dev/null)
# Image whose Python runs scripts/gen_secrets.py when the host has no python3 (make install).
PY_IMAGE := python:3.11.13-slim-bookworm
define open_url
	@set -a; source ./.env; set +a; host=$${BIND_HOST/0.0.0.0/127.0.0.1}; url="http://$$host:$${$(1)}"; \
	  echo "$(2): $$url  $(3)"; \
	  if command -v xdg-open >/dev/null 2>&1 && [ -n "$${DISPLAY}$${WAYLAND_DISPLAY}" ]; then xdg-open "$$url" >/dev/null 2>&1 & \
	  elif command -v open >/dev/null 2>&1 && [ "$$(uname -s)" = Darwin ]; then open "$$url"; fi
endef

.PHONY: install up down restart clean logs status airflow mlflow minio api check-compose
install: ## Prepare Docker: fill empty secrets in .env, AIRFLOW_UID (Linux), ./airflow folders
	@if command -v python3 >/dev/null 2>&1; then python3 scripts/gen_secrets.py .env --airflow-uid auto; \
	else docker run --rm --user "$$(id -u):$$(id -g)" -v "$$PWD:/src" -w /src $(PY_IMAGE) \
	  python scripts/gen_secrets.py .env --airflow-uid auto; fi
	@mkdir -p airflow/logs airflow/plugins
up: ## Build and start the Compose stack (PROFILE=all) and wait until every service is healthy
	$(DC) --profile $(PROFILE) up -d $(COMPOSE_BUILD) --wait
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
minio: ## The lake's web UI (MinIO console with Compose, SeaweedFS admin UI natively): URL and login
	@if [ -n "$(COMPOSE_UP)" ]; then $(MAKE) --no-print-directory lake-ui LAKE_UI="MinIO console"; \
	elif [ -S .local/run/supervisor.sock ]; then \
	  $(MAKE) --no-print-directory lake-ui LAKE_UI="SeaweedFS admin UI (native stack; Object Store > Buckets, or Files > /buckets)"; \
	else echo "the lake is not running: make up (Compose) or make local-up (native)"; fi
.PHONY: lake-ui
lake-ui:
	$(call open_url,MINIO_PORT_UI,$(LAKE_UI),(admin login: S3_ADMIN_ACCESS_KEY_ID / S3_ADMIN_SECRET_ACCESS_KEY in .env; the services use their own bucket-scoped users))
api: ## Model API Swagger UI URL (and open it)
	$(call open_url,FASTAPI_PORT,Model API,(docs: /docs))
check-compose: $(VENV)/.installed ## Static checks of the Compose stack (no Docker engine needed)
	$(PY) scripts/check_compose.py

.PHONY: monitoring
# Airflow exports its OpenTelemetry metrics only with the profile's otlp-bridge there to take them.
monitoring: ## Compose stack + profile monitoring (Prometheus, Pushgateway, Grafana; docs/monitoring.md): start and print the URLs
	AIRFLOW__METRICS__OTEL_ON=True $(DC) --profile $(PROFILE) --profile monitoring up -d $(COMPOSE_BUILD) --wait
	$(call open_url,GRAFANA_PORT,Grafana,(login: admin / see GRAFANA_ADMIN_PASSWORD in .env))
	$(call open_url,PROMETHEUS_PORT,Prometheus,)

.PHONY: demo-compose
# Same journey as `make demo`, through Compose: with DATA the `replay` service serves the exports
# and the platform downloads from it; the demo itself runs inside the api-server container.
demo-compose: install ## The whole journey through Docker Compose, no host Python needed (DATA=exports folder, MONTH=YYYY-MM)
	$(if $(DATA),REPLAY_DATA_DIR="$(abspath $(DATA))" SOCRATA_BASE_URL=http://replay:8765) \
	  $(DC) --profile all $(if $(DATA),--profile replay) up -d $(COMPOSE_BUILD) --wait
	@set -a; . ./.env; set +a; month="$(MONTH)"; \
	if [ -z "$$month" ] && [ -n "$(DATA)" ]; then \
	  month=$$(ls "$(DATA)/crimes" | sed -n 's/^\([0-9]\{4\}-[0-9]\{2\}\)\.csv\.gz$$/\1/p' | sort | tail -n 1); fi; \
	$(DC) exec -T -e AIRFLOW_PORT -e MLFLOW_PORT -e MINIO_PORT -e MINIO_PORT_UI -e FASTAPI_PORT \
	  airflow-apiserver bash -c 'exec python -m chicago_crime.devtools.demo --month "$$0" \
	  --airflow-url "http://127.0.0.1:$${AIRFLOW__API__PORT:-8080}"' "$$month"

.PHONY: test-compose
# Installs Debian's docker.io + debootstrap, runs dockerd loopback-only (stopped on every exit
# path), builds stand-in base images and the project's images (cached), brings up --profile all
# on the host network and walks the journey through the containers; see docs/docker.md.
test-compose: $(VENV)/.installed ## The Compose stack built and run on a real engine: users' journey through the containers (TEST_DATA)
	bash scripts/compose_test/run.sh $(PY) --data "$(TEST_DATA)" $(COMPOSE_TEST_ARGS)

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
# With the Compose stack up these run the `chicago-crime` CLI in the airflow-worker container
# (same image and settings as the DAG); otherwise in the host venv against the native stack.
train: ## Train, register and gate a model for MONTH=YYYY-MM outside Airflow (same code path)
	@test -n "$(MONTH)" || { echo "usage: make train MONTH=YYYY-MM" >&2; exit 2; }
	$(if $(COMPOSE_UP),$(DC) exec -T airflow-worker chicago-crime,$(PY) -m chicago_crime.cli) train --month $(MONTH)
rollback: ## Move the champion alias back to the previous champion
	$(if $(COMPOSE_UP),$(DC) exec -T airflow-worker chicago-crime,$(PY) -m chicago_crime.cli) rollback
champion: ## Print the current champion
	$(if $(COMPOSE_UP),$(DC) exec -T airflow-worker chicago-crime,$(PY) -m chicago_crime.cli) champion

.PHONY: bench
bench: ## Run every benchmark (prints figures; the pipeline ones need the native stack)
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_features.py --runs 2
	$(PY) bench/bench_train.py
	$(PY) bench/bench_api.py --model features
	$(PY) bench/bench_pipeline.py --month 2018-06 --to-champion
	$(PY) bench/bench_recovery.py

.PHONY: notebooks
# Compose stack up: JupyterLab in the `jupyter` container (profile notebooks) on the stack's lake
# and registry, editing ./notebooks; never touches the host (no install-native). Otherwise the
# host venv's JupyterLab against the native stack.
notebooks: ## Open the notebooks in JupyterLab (in a container when the Compose stack is up; NOTEBOOK_MONTH=YYYY-MM)
	@if [ -n "$(COMPOSE_UP)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then chmod -R g+w notebooks; fi; \
	  $(if $(NOTEBOOK_MONTH),NOTEBOOK_MONTH=$(NOTEBOOK_MONTH)) $(DC) --profile notebooks up -d $(COMPOSE_BUILD) --wait jupyter && \
	  set -a && . ./.env && set +a && \
	  echo "JupyterLab: http://$${BIND_HOST/0.0.0.0/127.0.0.1}:$${JUPYTER_PORT}/lab?token=$${JUPYTER_TOKEN}  (stop: make down)"; \
	else \
	  $(MAKE) --no-print-directory install-native && $(VENV)/bin/jupyter lab notebooks/; \
	fi

.PHONY: test-notebooks
test-notebooks: ## Execute both notebooks against the running stack (copies with outputs in artifacts/notebooks/)
	NOTEBOOK_MONTH="$(or $(MONTH),2018-06)" $(PYTEST) tests/e2e/test_notebooks.py $(PYTEST_ARGS)

.PHONY: replay
replay: install-native ## Serve a folder of portal exports as a Socrata API (DATA=../shared/data/chicago)
	$(PY) -m chicago_crime.devtools.replay --data "$(or $(DATA),$(TEST_DATA))" --port $(or $(REPLAY_PORT),8765)

.PHONY: lint
lint: ## ruff on the whole repository
	$(VENV)/bin/ruff check .
