# HemoStat — every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install services test-image images lint format test e2e bench run up down demo edge-up edge-down clean fresh-machine stack-env

help:
	@echo "make run    - run every agent and the dashboard locally (dry-run by default)"
	@echo "make test   - install what is needed, then run the whole test suite"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make bench  - benchmarks with figures and ratios"
	@echo "make up / down - the docker compose stack"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

services:
	scripts/ensure-services.sh redis docker busybox prometheus chromium compose

test-image: install services
	$(PY) -c 'from tests.support.services import docker_client, ensure_test_image; print(ensure_test_image(docker_client()))'

# Minutes on a fresh machine (debootstrap, Debian packages, wheels), seconds once cached: a step of
# its own with visible progress, never inside a test's timeout.
images: install services
	PYTHON=$(PY) scripts/offline-images.sh python redis prometheus alertmanager busybox wheels
	@echo "[images] building hemostat:latest (the agent image)"
	DOCKER_BUILDKIT=0 docker build --build-arg PIP_NO_INDEX=1 -t hemostat:latest .

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy agents shared dashboard

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install services test-image images
	$(PY) -m pytest $(PYTEST_ARGS)

e2e: install services images
	scripts/ensure-services.sh compose
	$(PY) -m pytest -m compose tests/compose -s $(PYTEST_ARGS)

bench: install services
	$(PY) -m bench

run: install
	scripts/ensure-services.sh redis docker
	$(VENV)/bin/hemostat run

# Refuses example secrets, then writes one env file per service (each gets only its settings).
stack-env: install
	@test -f .env || { cp .env.example .env; echo "created .env from .env.example"; }
	$(PY) -m agents.cli config stack-env --env-file .env --out .state/env

# The group owning the host's Docker socket: the socket proxies (non-root) join it, nothing else.
SOCKET_GID = $$(stat -c %g /var/run/docker.sock)

up: stack-env
	DOCKER_SOCKET_GID=$(SOCKET_GID) docker compose up -d --build

demo: stack-env
	DOCKER_SOCKET_GID=$(SOCKET_GID) HEMOSTAT_DRY_RUN=false docker compose --profile demo up -d --build

down:
	DOCKER_SOCKET_GID=0 docker compose --profile demo down

# An edge host of a fleet (docker-compose.edge.yml): Monitor + Responder against a central Redis.
edge-up: install
	@test -f .env || { echo ".env is missing: set REDIS_URL (the central Redis) and HEMOSTAT_HOST_NAME"; exit 1; }
	$(PY) -m agents.cli config stack-env --edge --env-file .env --out .state/env
	@mkdir -p .state/tls
	DOCKER_SOCKET_GID=$(SOCKET_GID) docker compose -f docker-compose.edge.yml up -d --build

edge-down:
	DOCKER_SOCKET_GID=0 docker compose -f docker-compose.edge.yml down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .state

# The README's two commands on a clean clone with nothing cached (venv, images, .state), timed.
fresh-machine:
	scripts/fresh-machine.sh
