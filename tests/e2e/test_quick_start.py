"""`make run`'s stack (bin/devstack.py) on a machine that never ran it: SQLite, embedded Redis, web, worker, beat.

The test starts it the way the Makefile does, logs into the admin as the `admin` user the command created, runs
the seed package through the CLI against that stack, then stops it like Ctrl-C and checks nothing is left.
"""

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import psutil
import pytest

from tests.e2e.conftest import BASE_DIR
from tests.factories import SEED_DIR

pytestmark = pytest.mark.e2e
PASSWORD = "alice-quick-start-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def quick_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"}}
    port = free_port()
    env.update(EXECUTOR_DATA_DIR=str(tmp_path / "data"), EXECUTOR_PORT=str(port), EXECUTOR_ADMIN_PASSWORD=PASSWORD)
    log_path = tmp_path / "devstack.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "bin/devstack.py"], cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{base_url}/healthz", log_path, timeout=120)
        yield base_url, env, log_path, proc
    finally:
        _kill_tree(proc)


def test_make_run_serves_the_admin_runs_packages_and_stops_on_ctrl_c(quick_start):
    base_url, env, log_path, proc = quick_start

    admin_index = _login(base_url, "admin", PASSWORD)
    assert "<title>Script automation | Executor</title>" in admin_index and "Log out" in admin_index

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
        )

    assert manage("import_package", str(SEED_DIR)).returncode == 0
    result = manage("run_package", "seed_package", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr + log_path.read_text()
    assert '"status": "completed"' in result.stdout
    assert "somekey -> some value 2" in result.stdout

    stack = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in stack)
    assert "redis-server" in names and "gunicorn" in names and " worker " in names and " beat " in names

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process group
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(stack, timeout=15)
    assert alive == [], f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"


def _kill_tree(proc: subprocess.Popen) -> None:
    """After a failure: devstack gives each child its own process group, so kill them one by one."""
    if proc.poll() is not None:
        return
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _wait_for_http(url: str, log_path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log_path.read_text()[-4000:]}")


def _login(base_url: str, username: str, password: str) -> str:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login_url = f"{base_url}/admin/login/?next=/admin/"
    page = opener.open(login_url).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"}
    ).encode()
    request = urllib.request.Request(login_url, data=form, headers={"Referer": login_url})
    return opener.open(request).read().decode()
