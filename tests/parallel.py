"""One pytest-xdist worker's own resources (`make test` runs the suite with `-n`): loaded with `-p tests.parallel`
(pyproject.toml's addopts) so that it runs before pytest-django reads the settings, in the controller (where it does
nothing) and in each worker (gw0, gw1, ...).

Each worker gets, derived from what the caller set (or the settings' defaults):
- its own Redis database: REDIS_URL's number minus the worker's index (11, 10, ... for `make test`'s 11), since every
  test may flush it and the end-to-end workers consume every queue in it;
- its own range of step uids: EXECUTOR_STEP_UID_BASE + 100 x index (a test run's steps run as base + slot, and tests
  look for processes of those uids; slots stay below 64, tests/security/test_supervision.py uses base + 95);
- its own metrics directory (PROMETHEUS_MULTIPROC_DIR/<worker>): tests compare two scrapes of /metrics, which add up
  every file of that directory.
The test database is pytest-django's: test_<name>_<worker>; databases a test makes itself take `database_suffix()`.
Work directories, ports and sockets are already per test (tmp_path, free ports).
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

STEP_UID_BASE_DEFAULT = 20000  # executor_project/settings.py's EXECUTOR_STEP_UID_BASE when unset
STEP_UIDS_PER_WORKER = 100
REDIS_DATABASES = 16  # redis-server's default `databases`
own_environment = pytest.StashKey[dict[str, str]]()  # what this worker set, for pytest_configure to check


def worker_index() -> int | None:
    """This process's xdist worker number (gw3: 3); None outside a parallel run (or in its controller)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return int(worker.removeprefix("gw")) if worker else None


def database_suffix() -> str:
    """What a database a test makes by name needs at the end to be its worker's own ('' in a serial run)."""
    index = worker_index()
    return "" if index is None else f"_gw{index}"


def redis_url_of_worker(url: str, index: int) -> str:
    """The same Redis, database number lowered by `index` (wrapping below 0)."""
    parts = urlsplit(url)
    if parts.scheme == "redis+socket":  # kombu's socket form names the database in ?virtual_host=
        query = dict(parse_qsl(parts.query))
        number = (int(query.get("virtual_host") or 0) - index) % REDIS_DATABASES
        return f"{url.partition('?')[0]}?{urlencode({**query, 'virtual_host': number})}"  # geturl() drops the //
    number = (int(parts.path.strip("/") or 0) - index) % REDIS_DATABASES
    return parts._replace(path=f"/{number}").geturl()


def metrics_dir_default() -> str:
    """executor_project/settings.py's EXECUTOR_METRICS_DIR when PROMETHEUS_MULTIPROC_DIR is unset."""
    base_dir = Path(__file__).resolve().parents[1]
    return str(Path(os.environ.get("EXECUTOR_DATA_DIR", str(base_dir / ".devdata"))) / "metrics")


def worker_environment(index: int, count: int) -> dict[str, str]:
    """The environment variables of worker `index` (of `count`), from this process's."""
    if count > REDIS_DATABASES:
        raise pytest.UsageError(f"at most {REDIS_DATABASES} workers: each needs a Redis database of its own")
    own = {
        "EXECUTOR_STEP_UID_BASE": str(
            int(os.environ.get("EXECUTOR_STEP_UID_BASE", STEP_UID_BASE_DEFAULT)) + STEP_UIDS_PER_WORKER * index
        ),
        "PROMETHEUS_MULTIPROC_DIR": os.path.join(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or metrics_dir_default(), f"gw{index}"
        ),
    }
    if os.environ.get("REDIS_URL"):
        own["REDIS_URL"] = redis_url_of_worker(os.environ["REDIS_URL"], index)
    return own


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config):
    """Before pytest-django loads the settings (its own pytest_load_initial_conftests)."""
    index = worker_index()
    if index is not None:
        own = worker_environment(index, int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
        os.environ.update(own)  # read by the settings, and passed on to every process a test starts
        early_config.stash[own_environment] = own


def pytest_configure(config):
    """The settings read what was set above (a setting read before, or under another name, would share a resource)."""
    own = config.stash.get(own_environment, None)
    if not own:
        return
    from django.conf import settings

    assert settings.EXECUTOR_STEP_UID_BASE == int(own["EXECUTOR_STEP_UID_BASE"]), settings.EXECUTOR_STEP_UID_BASE
    assert settings.EXECUTOR_METRICS_DIR == own["PROMETHEUS_MULTIPROC_DIR"], settings.EXECUTOR_METRICS_DIR
    if "REDIS_URL" in own:
        assert settings.CELERY_BROKER_URL == own["REDIS_URL"], settings.CELERY_BROKER_URL


def pytest_collection_modifyitems(config, items):
    """In a parallel run, the end-to-end test files first (in their order; each test in them waits seconds on real
    processes): handed out last, a few of them would keep one worker busy long after the others ran out of files.
    Within a file the order stays; `make test` keeps this order of files (--no-loadscope-reorder)."""
    if worker_index() is None:
        return
    end_to_end = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in end_to_end)  # stable: the rest keep their order
