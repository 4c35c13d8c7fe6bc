# edge-agent: a fresh Debian / Raspberry Pi OS machine needs only `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests and the demo talk to (real broker, gpsd, ffprobe, PulseAudio, ...).
DEB_PACKAGES := mosquitto mosquitto-clients gpsd gpsd-clients chrony ffmpeg socat \
	pulseaudio libportaudio2 libasound2-plugins python3-venv systemd shellcheck chromium fuse3
# make bench B=GROUP, one of: seal spool gps uplink link video audio fleet geofence talk jt808
B ?=

.PHONY: setup deps venv demo test lint typecheck bench soak clean

setup: deps venv

deps: $(VENV)/.deb-stamp
$(VENV)/.deb-stamp: Makefile
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "missing Debian packages:$$missing"; \
			echo "run as root: apt-get install$$missing   (or: sudo make setup)"; exit 1; \
		fi; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.pip-stamp
$(VENV)/.pip-stamp: pyproject.toml $(VENV)/.deb-stamp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $@

demo: setup
	$(PY) -m agent.labs.demo

lint: setup
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(B)

# The chaos soak: every seed its own run (docs/reliability.md), a summary table at the end.
SOAK_SEEDS ?= 1-20
SOAK_MINUTES ?= 4
SOAK_JOBS ?= 2
soak: setup
	EDGE_AGENT_SOAK=1 $(VENV)/bin/pytest -q -s tests/storage/test_powercut.py \
		tests/capture/test_recording_cut.py tests/runtime/test_run_bodycam_cut.py
	EDGE_AGENT_SOAK=1 $(VENV)/bin/pytest -q tests/gps/test_receivers.py
	$(PY) -m tests.chaos --seeds $(SOAK_SEEDS) --minutes $(SOAK_MINUTES) --jobs $(SOAK_JOBS)

format: setup
	$(VENV)/bin/ruff format agent tests bench
	$(VENV)/bin/ruff check --fix agent tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-out
