# One command to run, one to test. Both create the virtualenvs on first use.
#   make run    web (:8000) + worker + beat; SQLite and an embedded Redis unless DATABASE_URL / REDIS_URL are set
#   make test   the whole suite against PostgreSQL and Redis on 127.0.0.1 (override with DATABASE_URL / REDIS_URL),
#               then the fault suite (make faults: its own PostgreSQL and Redis); with PYTEST_ARGS the first part only
PYTHON ?= python3.11
VENV := .venv
RUNTIME := .runtime

.PHONY: install run test faults lint format bench bench-admin bench-events bench-retention clean

install: $(VENV)/.installed $(RUNTIME)/.installed

# The executor's own environment (Django, Celery, test tools).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The script runtime: a separate environment with the FX helper libraries (see workers/runtime/README.md).
$(RUNTIME)/.installed: workers/runtime/requirements.txt
	test -x $(RUNTIME)/bin/python || $(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install --quiet --disable-pip-version-check --no-deps -r workers/runtime/requirements.txt
	touch $@

run: install
	$(VENV)/bin/python bin/devstack.py

# Test files run in parallel (pytest-xdist), each worker with its own database, Redis database and step uids
# (tests/parallel.py); most of the suite waits on real processes, so more workers than cores pay. TEST_WORKERS=0: serial.
# Worker n uses REDIS_URL's database minus n: 11 to 8 by default, clear of the benches' 13 and 14.
TEST_WORKERS ?= 4
test: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/executor
test: export REDIS_URL ?= redis://127.0.0.1:6379/11
test: export SECRET_KEY ?= test-secret-key-not-for-production
test: export EXECUTOR_FERNET_KEYS ?= dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0=
test: install
	$(VENV)/bin/pytest --ignore=tests/faults -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)
ifeq ($(PYTEST_ARGS),)
	$(VENV)/bin/pytest tests/faults -p no:cacheprovider
endif

# The fault suite: its own PostgreSQL cluster and Redis on private ports, killed and restarted on purpose.
faults: install
	$(VENV)/bin/pytest tests/faults -p no:cacheprovider $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python bench/run.py

bench-admin: install
	$(VENV)/bin/python bench/admin_lists.py

bench-retention: install
	$(VENV)/bin/python bench/retention.py

bench-events: install
	$(VENV)/bin/python bench/events.py $(BENCH_ARGS)

# ruff, then the import contracts of pyproject.toml (lint-imports: no app imports another in a loop).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(RUNTIME) .devdata
