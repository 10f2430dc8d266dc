# keyturn: `make demo` to see it work, `make test` to check it. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-node lint bench soak clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,postgres,mysql,vault,server]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench demo
	$(VENV)/bin/ruff format --check src tests bench demo
	$(VENV)/bin/mypy --strict
	$(VENV)/bin/lint-imports --no-cache

test: lint
	$(PY) -m pytest -q
	$(MAKE) test-node

# The Node.js client (clients/node), against databases this venv's keyturn CLI makes.
test-node: $(STAMP)
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	cd clients/node && KEYTURN_PYTHON=$(abspath $(PY)) npm test

# The concurrency model (tests/processes/test_model.py) on long schedules, outside the suite.
soak: $(STAMP)
	KEYTURN_MODEL_STEPS=$${KEYTURN_MODEL_STEPS:-150} $(PY) -m pytest -q tests/processes/test_model.py

bench: $(STAMP)
	$(PY) bench/crypto_overhead.py
	$(PY) bench/rotate.py
	$(PY) bench/alternatives.py
	$(PY) bench/json_rotate.py
	$(PY) bench/cli_start.py
	$(PY) bench/bulk_ops.py
	$(PY) bench/bulk_ops.py --long
	$(PY) bench/import_legacy.py
	$(PY) bench/import_legacy.py --fernet
	$(PY) bench/status_scale.py
	$(PY) bench/rotate_servers.py --rounds 3 --runs "keyturn,2workers,auto,(a)seeds,(b)piped,(b)ctid"
	$(PY) bench/orm_load.py
	$(PY) bench/django_load.py
	$(PY) bench/orm_instructions.py
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error && node bench/tokens.mjs

clean:
	rm -rf $(VENV) demo/work .pytest_cache .mypy_cache .ruff_cache clients/node/node_modules
