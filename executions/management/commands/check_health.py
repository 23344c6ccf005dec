"""`manage.py check_health web|worker|beat`: a health check for a supervisor (docker-compose's healthcheck, a
systemd watchdog, a monitoring probe). Exit status 0 and one line on stdout when healthy; 1 and one line on stderr
saying why not.

- web: GET /readyz of the web process (--url; it checks the database and Redis, executor_project/health.py).
- worker: the worker's liveness entry in Redis (--name worker@host, else any worker): a recent heartbeat, a
  consumer loop that turns, and no messages left waiting beside a free slot (workers/worker_liveness.py).
- beat: beat's last tick (--name beat@host, else any beat).

Silence longer than EXECUTOR_HEALTH_STALE_SECONDS (30) is a failure. No system checks: a probe every few seconds
must not load the URL conf and the API.
"""

import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand

from executor_project import liveness

DEFAULT_URL = "http://127.0.0.1:8000/readyz"


class Command(BaseCommand):
    help = "Exit 0 if the web, a worker or beat is healthy; otherwise 1, with the reason on one line."
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("process", choices=["web", "worker", "beat"])
        parser.add_argument("--name", help="the node name (worker@host, beat@host); default: any of them")
        parser.add_argument("--url", default=DEFAULT_URL, help=f"web only: the readiness URL (default {DEFAULT_URL})")
        parser.add_argument("--timeout", type=float, default=5.0, help="web only: seconds to wait for an answer")
        parser.add_argument("--stale", type=float, help="worker, beat: seconds of silence that count as a failure "
                                                        "(default EXECUTOR_HEALTH_STALE_SECONDS)")  # fmt: skip

    def handle(self, *args, process: str, name: str | None, url: str, timeout: float, stale: float | None, **options):
        if process == "web":
            problem, healthy = check_web(url, timeout), f"web: ready ({url})"
        else:
            stale = settings.EXECUTOR_HEALTH_STALE_SECONDS if stale is None else stale
            problem, healthy = check_process(process, name, stale), f"{name or process}: healthy"
        if problem:
            self.stderr.write(problem)
            raise SystemExit(1)
        self.stdout.write(healthy)


def check_process(kind: str, name: str | None, stale: float) -> str | None:
    try:
        entries = liveness.read_all()
    except Exception as exc:  # a redis-py error, or a URL it cannot use: one line either way
        return f"cannot read the liveness entries from Redis ({type(exc).__name__})"
    return liveness.verdict(kind, entries, time.time(), stale, name)


def check_web(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"web: {exc.code} from {url}{_down(exc)}"
    except (OSError, ValueError) as exc:  # refused, timed out, a malformed URL
        return f"web: no answer from {url} ({getattr(exc, 'reason', None) or type(exc).__name__})"
    return None


def _down(exc: urllib.error.HTTPError) -> str:
    """What /readyz's body says is down, as ' (redis unreachable)', if the body is one of its answers."""
    try:
        checks = json.loads(exc.read(4096)).get("checks", {})
        down = [f"{name} {state}" for name, state in checks.items() if state != "ok"]
    except (ValueError, AttributeError, OSError):
        return ""
    return f" ({', '.join(down)})" if down else ""
