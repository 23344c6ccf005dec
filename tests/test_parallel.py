"""tests/parallel.py: what each pytest-xdist worker of `make test` gets of its own."""

import pytest

from tests.parallel import redis_url_of_worker, worker_environment


@pytest.mark.parametrize(
    ("url", "index", "expected"),
    [
        ("redis://127.0.0.1:6379/11", 0, "redis://127.0.0.1:6379/11"),
        ("redis://127.0.0.1:6379/11", 3, "redis://127.0.0.1:6379/8"),
        ("redis://:pw@127.0.0.1:6379/1", 3, "redis://:pw@127.0.0.1:6379/14"),  # below 0: from the top
        ("redis://127.0.0.1:6379", 1, "redis://127.0.0.1:6379/15"),  # no number: database 0
        ("rediss://host:6380/5?ssl_cert_reqs=none", 2, "rediss://host:6380/3?ssl_cert_reqs=none"),
        ("redis+socket:///data/redis.sock?virtual_host=4", 1, "redis+socket:///data/redis.sock?virtual_host=3"),
        ("redis+socket:///data/redis.sock", 1, "redis+socket:///data/redis.sock?virtual_host=15"),
    ],
)
def test_each_worker_gets_the_redis_database_below_the_one_before(url, index, expected):
    assert redis_url_of_worker(url, index) == expected


def test_a_worker_gets_its_own_step_uids_metrics_directory_and_redis_database(monkeypatch, tmp_path):
    monkeypatch.setenv("EXECUTOR_STEP_UID_BASE", "61000")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/9")

    own = worker_environment(2, 4)

    assert own == {"EXECUTOR_STEP_UID_BASE": "61200", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "gw2"),
                   "REDIS_URL": "redis://127.0.0.1:6379/7"}  # fmt: skip


def test_the_step_uid_base_defaults_as_the_settings_do(monkeypatch, tmp_path):
    monkeypatch.delenv("EXECUTOR_STEP_UID_BASE", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    assert worker_environment(1, 4)["EXECUTOR_STEP_UID_BASE"] == "20100"


def test_more_workers_than_redis_databases_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(pytest.UsageError, match="at most 16 workers"):
        worker_environment(0, 17)
