# Two entry points: `make run` (the bridge on embedded engines) and `make test` (the whole suite).
# Both create .venv/ with the project installed; `make test` also installs the real protocol
# peers the end-to-end tests talk to (sipp, baresip, Chromium, espeak-ng, redis-server) from
# Debian packages.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PEERS := sipp baresip chromium espeak-ng redis-server
APT_PACKAGES := sip-tester baresip-core chromium chromium-driver espeak-ng redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test lint peers bench venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/bridge serve --config config/default.yaml

peers:
	@missing=""; for p in $(PEERS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing test peers:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check bridge tests bench
	$(VENV)/bin/ruff format --check bridge tests bench

# Tests run in a private network namespace with only loopback when the machine allows it
# (root, or unprivileged user namespaces), so no test packet can leave the machine.
test: $(STAMP) peers lint
	@if unshare -rn true 2>/dev/null; then \
		exec unshare -rn sh -c 'ip link set lo up && exec $(VENV)/bin/pytest $(PYTEST_ARGS)'; \
	else \
		echo "note: no network namespace available; tests bind 127.0.0.1 only"; \
		exec $(VENV)/bin/pytest $(PYTEST_ARGS); \
	fi

bench: $(STAMP)
	$(VENV)/bin/python -m bench
