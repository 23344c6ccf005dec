"""`make run`'s stack (bin/devstack.py) on a machine that never ran it: SQLite, embedded Redis, web, worker, beat.

The test starts it the way the Makefile does, logs into the admin as the `admin` user the command created, runs
the seed package through the CLI against that stack, then stops it like Ctrl-C and checks nothing is left.
"""

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.e2e.admin_pages import login_page_and_stylesheets
from tests.e2e.processes import BASE_DIR, children, command_line, devstack_process, free_port, left_running
from tests.factories import SEED_DIR
from tests.metrics_scrape import Scrape

pytestmark = pytest.mark.e2e
PASSWORD = "alice-quick-start-pw"


@pytest.fixture
def quick_start(tmp_path):
    own = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "PROMETHEUS_MULTIPROC_DIR"}  # the stack's, not ours
    env = {k: v for k, v in os.environ.items() if k not in own}
    port = free_port()
    env.update(EXECUTOR_DATA_DIR=str(tmp_path / "data"), EXECUTOR_PORT=str(port), EXECUTOR_ADMIN_PASSWORD=PASSWORD)
    with devstack_process(env, tmp_path / "devstack.log") as stack:
        yield f"http://127.0.0.1:{port}", env, stack.log_path, stack.proc


def test_make_run_serves_the_admin_runs_packages_and_stops_on_ctrl_c(quick_start):
    base_url, env, log_path, proc = quick_start

    admin_index = _login(base_url, "admin", PASSWORD)
    assert "<title>Script automation | Executor</title>" in admin_index and "Log out" in admin_index
    served = login_page_and_stylesheets(base_url)  # DEBUG on: straight from the apps, nothing collected
    assert set(served.values()) == {200} and any("admin/css/base.css" in path for path in served), served

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
        )

    assert manage("import_package", str(SEED_DIR)).returncode == 0
    result = manage("run_package", "seed_package", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr + log_path.read_text()
    assert '"status": "completed"' in result.stdout
    assert "somekey -> some value 2" in result.stdout
    _assert_metrics_moved(base_url)

    stack = children(proc.pid, recursive=True)
    names = " ".join(command_line(p) for p in stack)
    assert "redis-server" in names and "gunicorn" in names and " worker " in names and " beat " in names

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process group
    proc.wait(timeout=60)
    alive = left_running(stack, timeout=15)
    assert alive == [], f"still running after Ctrl-C: {[command_line(p) for p in alive]}"


def _assert_metrics_moved(base_url: str) -> None:
    """Prometheus' view of the run: what gunicorn, the worker's pool process and beat wrote, in one scrape."""
    labels = {"package": "seed_package", "project": "", "trigger_type": "manual"}
    deadline = time.monotonic() + 15
    while True:
        scrape = Scrape.parse(urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode())
        moved = [
            scrape.value("executor_executions_finished_total", **labels, status="completed") == 1,
            scrape.value("executor_step_duration_seconds_count", handler="python", status="completed") == 1,
            scrape.has("executor_queue_depth", lane="default"),
            scrape.value("executor_beat_last_tick_timestamp_seconds", message="reap") > 0,
        ]
        if all(moved):
            return
        assert time.monotonic() < deadline, (moved, scrape)
        time.sleep(0.5)


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
