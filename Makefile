# The two commands a user needs: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-unit test-root demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

demo: setup
	$(VENV)/bin/svcctl demo

bench: setup
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/results/latest.json -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
