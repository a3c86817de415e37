# The two commands a user needs: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-unit test-root demo bench bench-quick bench-flood fuzz soak clean

setup:
	@bash scripts/setup.sh

# Each test is bounded (TEST_TIMEOUT seconds; the slowest takes under 30 s here): a test that
# hangs fails alone, with every thread's stack, instead of holding the run to CI's limit.
TEST_TIMEOUT ?= 300

test: setup
	$(PY) -m pytest -q --timeout=$(TEST_TIMEOUT) tests

test-unit: setup
	$(PY) -m pytest -q --timeout=$(TEST_TIMEOUT) tests/unit

demo: setup
	$(VENV)/bin/svcctl demo

# Every scenario (~28 min: the last full run's scenarios took 1,669 s): bench/results/latest.json,
# report.md, PNGs. ARGS=--quick (or `make bench-quick`) for a smoke run at reduced sizes, written
# under bench/results/quick/ — not quick: ~11 min here, most of it compiling a program per
# configuration; its report.md names any scenario that failed.
bench: setup
	$(PY) bench/run.py $(ARGS)

bench-quick: setup
	$(PY) bench/run.py --quick

# 1,000,000 random and mutated frames through the pods' entry point, each compared with
# the reference model (tests/packet/fuzz.py; about a minute), then 300,000 through the
# external entry point, each held to the rules of tests/packet/fuzz_external.py (~15 s).
# FRAMES=n for another count of each.
fuzz: setup
	$(PY) -m tests.packet.fuzz --frames $(or $(FRAMES),1000000)
	$(PY) -m tests.packet.fuzz_external --frames $(or $(FRAMES),300000)

# Established flows surviving a spoofed SYN flood, per algorithm (~1 min): the README quotes
# bench/results/flood.json. ARGS=--quick (4 algorithms, one pattern) writes
# bench/results/quick/flood.json instead, so a smoke run never overwrites the full run's file.
FLOOD_JSON = bench/results/$(if $(findstring --quick,$(ARGS)),quick/)flood.json
bench-flood: setup
	@mkdir -p $(dir $(FLOOD_JSON))
	$(PY) bench/bench_flood.py --json $(FLOOD_JSON) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Issue 14: 5 minutes of endpoint churn and agent restarts under traffic in a lab (not in
# `make test`); ARGS="--seconds 30" for a short run. Report: bench/results/soak.json.
soak: setup
	$(PY) bench/soak.py $(ARGS)
