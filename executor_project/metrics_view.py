"""GET /metrics: Prometheus' scrape target (the metrics themselves: executor_project/metrics.py).

Open while EXECUTOR_METRICS_TOKEN is unset, like /healthz: counts and names of packages and projects, no secret,
no execution id. With the token set, a scrape needs `Authorization: Bearer <token>` (Prometheus:
`authorization: {credentials: ...}`), compared in constant time; anything else is 401 and reveals nothing.
The sampled gauges fail on their own (their last values stay, executor_metrics_sample_errors_total counts it), so a
database or Redis blink never fails a scrape; a metrics directory that cannot be read is a 503.
"""

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods

from . import metrics
from .errors import RETRY_AFTER_SECONDS

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "HEAD"])
def metrics_view(request: HttpRequest) -> HttpResponse:
    if settings.EXECUTOR_METRICS_TOKEN and not _authorized(request, settings.EXECUTOR_METRICS_TOKEN):
        response = HttpResponse("Unauthorized: send Authorization: Bearer <EXECUTOR_METRICS_TOKEN>.\n", status=401,
                                content_type="text/plain")  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    metrics.sample()
    try:
        body = metrics.exposition()
    except Exception as exc:
        logger.warning("metrics: could not read %s (%s: %s)", metrics.MULTIPROCESS_DIR, type(exc).__name__, exc)
        response = HttpResponse("Metrics are unavailable right now.\n", status=503, content_type="text/plain")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return HttpResponse(body, content_type=metrics.CONTENT_TYPE)


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Both sides as bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
