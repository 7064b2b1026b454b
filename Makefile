# The two commands the README opens with, and the pieces they are made of.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup guest lint typecheck bench clean

setup:
	@contrib/setup.sh

guest: setup
	@contrib/build-test-guest

demo: guest
	@contrib/demo.sh

test: guest
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check protocol qemud client certs tests bench

typecheck: setup
	$(VENV)/bin/mypy protocol qemud client certs

bench: guest
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
