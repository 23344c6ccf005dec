"""How many requests one API key may make: its own rate limit if a superuser set one (ApiKey.rate_limit), else
EXECUTOR_API_RATE_LIMIT ("6000/m" by default), counted per key by django-ratelimit in the broker's Redis
(settings.CACHES["api_rate"]), over fixed windows whose edges differ from key to key. A key past its limit is
answered 429 with Retry-After, the seconds left in its window, before its request is looked at: one team's runaway
sender cannot take the web processes, the database and the queues from every other team. Every request of the key
counts, whatever its endpoint and answer.

Redis unreachable: the request goes through uncounted (a warning in the log, one a minute), after at most the
cache's connect timeout. Refusing every API call while Redis blinks would turn a blink into an outage, and an event
accepted then is recorded and queued as soon as Redis is back anyway (executions/queueing.py).
"""

import logging
import time

import redis
from django.conf import settings
from django_ratelimit.core import get_usage
from ninja.errors import HttpError

from . import metrics

logger = logging.getLogger(__name__)

GROUP = "executor.api"
_COMPLAINT_SECONDS = 60.0  # every request fails alike while Redis is away: one warning a minute says it
_complained_at = float("-inf")


class RateLimited(HttpError):
    def __init__(self, rate: str, source: str, retry_after: int) -> None:
        super().__init__(429, f"This API key made more than {rate} requests ({source}): try again in {retry_after} "
                              "s.")  # fmt: skip
        self.retry_after = retry_after


def check(request, key_hash: str, own_limit: str) -> None:
    """Count the request against its key (by the key's hash: the key itself is never stored), under the key's own
    limit if a superuser set one (`own_limit`), else EXECUTOR_API_RATE_LIMIT; RateLimited past it."""
    rate, source = own_limit, "this key's limit"
    if not rate:
        rate, source = settings.EXECUTOR_API_RATE_LIMIT, "EXECUTOR_API_RATE_LIMIT"
    if rate in {"", "off"}:
        return
    try:
        usage = get_usage(request, group=GROUP, key=lambda _group, _request: key_hash, rate=rate, increment=True)
    except (redis.RedisError, OSError) as exc:
        _complain(exc)
        metrics.inc(metrics.API_RATE_LIMIT, outcome="uncounted")
        return
    if usage and usage["should_limit"]:
        metrics.inc(metrics.API_RATE_LIMIT, outcome="refused")
        raise RateLimited(rate, source, max(usage["time_left"], 1))


def _complain(exc: Exception) -> None:
    global _complained_at
    if time.monotonic() - _complained_at >= _COMPLAINT_SECONDS:
        _complained_at = time.monotonic()
        logger.warning("API requests not counted against their keys' rate limits: Redis is unreachable (%s); "
                       "quiet about it for %d s", type(exc).__name__, _COMPLAINT_SECONDS)  # fmt: skip
