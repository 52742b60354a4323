# CrowdSky: `make run` installs and starts the site on the embedded defaults;
# `make test` installs the test needs, starts the database servers and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install install-test run migrate test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -r requirements.txt

install-test: $(PY)
	$(PY) -m pip install --quiet -r requirements-test.txt
	bash infra/test-tools.sh

# The schema, then the ingest app, one stacker and the janitor; Ctrl-C stops all three (lib/launcher.py).
# The plate solver is installed when possible (root); otherwise the command is printed and stacks stay unsolved.
run: install
	@bash infra/plate-solver.sh
	$(PY) -m lib.launcher --host $(HOST) --port $(PORT)

migrate: install
	$(PY) ingest_app.py migrate

test: install-test
	bash infra/test-databases.sh
	$(PY) -m pytest -n 2 --dist loadfile

clean:
	rm -rf var .pytest_cache test-artifacts
