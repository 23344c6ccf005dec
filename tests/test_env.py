import pytest
from django.core.exceptions import ImproperlyConfigured

from executor_project.env import env_bool, env_database, env_int, env_list, env_redis_url, env_str


def test_it_reads_booleans(monkeypatch):
    monkeypatch.setenv("FLAG", "Yes")
    assert env_bool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "off")
    assert env_bool("FLAG", True) is False
    monkeypatch.delenv("FLAG")
    assert env_bool("FLAG", True) is True


def test_it_refuses_a_boolean_it_cannot_read(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        env_bool("DEBUG", False)


def test_it_checks_integer_bounds(monkeypatch):
    monkeypatch.setenv("N", "5")
    assert env_int("N", 1, minimum=1, maximum=10) == 5
    monkeypatch.setenv("N", "0")
    with pytest.raises(ImproperlyConfigured, match="below the minimum of 1"):
        env_int("N", 1, minimum=1)
    monkeypatch.setenv("N", "ten")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("N", 1)


def test_it_splits_lists_and_refuses_empty_items(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example , b.example")
    assert env_list("HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("HOSTS", "")
    assert env_list("HOSTS", ["default"]) == []
    monkeypatch.setenv("HOSTS", "a.example,,b")
    with pytest.raises(ImproperlyConfigured, match=r"^HOSTS has an empty item \(position 2\)$"):
        env_list("HOSTS", [])


def test_it_requires_a_string_without_default(monkeypatch):
    monkeypatch.delenv("MISSING_THING", raising=False)
    with pytest.raises(ImproperlyConfigured, match="MISSING_THING must be set"):
        env_str("MISSING_THING")


def test_it_parses_database_urls(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://bob:pw@db.example:5433/executor")
    config = env_database("DATABASE_URL", "sqlite:///x")
    assert (config["ENGINE"], config["HOST"], config["PORT"], config["NAME"]) == (
        "django.db.backends.postgresql",
        "db.example",
        5433,
        "executor",
    )
    monkeypatch.setenv("DATABASE_URL", "mongodb://nope/x")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        env_database("DATABASE_URL", "sqlite:///x")


def test_it_accepts_only_redis_urls(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/2")
    assert env_redis_url("REDIS_URL", "") == "redis://127.0.0.1:6379/2"
    monkeypatch.setenv("REDIS_URL", "amqp://guest@localhost//")
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL must start with"):
        env_redis_url("REDIS_URL", "")
