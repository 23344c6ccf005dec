"""Health of the web process: liveness (/healthz) and readiness (/readyz).

/healthz answers whether this process serves requests and reaches the database (load balancers, docker-compose).
/readyz also checks the broker's Redis, each dependency with a short timeout, and names what is down:

    200 {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    503 {"status": "unavailable", "checks": {"database": "ok", "redis": "unreachable"}}

Never a 500 and never an error's text: a driver's message can quote a host, a query or (in a URL) a password, so
only the error's type goes to the log. The database check uses this thread's own connection (so a probe every few
seconds opens no new one) and its connect_timeout (settings: 5 s); Redis gets a client with 1 s timeouts and no
retries (executor_project/liveness.py). Both are unauthenticated on purpose, like /healthz: they say nothing but
"ok" or "unreachable". `manage.py check_health web` calls /readyz over HTTP.
"""

import logging

from django.db import connection
from django.http import JsonResponse

from . import database, liveness

logger = logging.getLogger(__name__)


def healthz(request):
    """Liveness for load balancers and docker-compose: the process answers and the database is reachable."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Readiness: the database and Redis both answer (200), or which of them does not (503)."""
    checks = {"database": _database_answers(), "redis": _redis_answers()}
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": {name: "ok" if ok else "unreachable" for name, ok in checks.items()},
    }
    return JsonResponse(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        logger.warning("readyz: the database is unreachable (%s)", type(exc).__name__)
        database.reset_connection()  # the next probe opens a new one
        return False
    return True


def _redis_answers() -> bool:
    try:
        liveness.client().ping()
    except Exception as exc:
        logger.warning("readyz: Redis is unreachable (%s)", type(exc).__name__)
        return False
    return True
