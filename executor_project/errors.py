"""Errors answered in a form their caller can use: never an HTML 500 for a dependency hiccup, never a traceback.

- The database or the message broker unreachable (a restart, a failover, Redis refusing writes): 503 with
  `Retry-After`, since the same request will most likely work a few seconds later. The API answers JSON
  `{"detail": ...}`; admin and other pages a plain page (templates/503.html) that needs neither the database nor
  the session, and a one-line warning goes to the log instead of a traceback.
- Anything else unexpected on the API: JSON 500 `{"detail": "internal error"}`. Django still logs the traceback
  and sends got_request_exception as for any 500; only the answer changes (in DEBUG too, where Django and ninja
  would answer with the traceback). Pages keep Django's own 500 handling.
- Every other error of the API that is not JSON yet (an unknown path, a method not allowed) gets
  `{"detail": "<reason>"}` with its status.

ErrorResponsesMiddleware goes right after SecurityMiddleware, so it sees the errors of every middleware after it
(a session saved while the database is down) as well as the views'.
"""

import logging
import sys

import kombu.exceptions
import redis.exceptions
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

logger = logging.getLogger(__name__)

# Long enough for a fast database restart, short enough that a client does not wait for nothing.
RETRY_AFTER_SECONDS = 5
# Paths whose callers are programs: answered in JSON (the HTTP API and the Git push webhook).
API_PREFIXES = ("/fx/", "/git/")
_FAILURE = "_executor_failure"  # the exception a middleware raised, kept on the request (see _keep_failure)

DATABASE_ERRORS = (OperationalError, InterfaceError)
BROKER_ERRORS = (
    kombu.exceptions.OperationalError,  # what Celery raises when a publish found no broker
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # maxmemory with noeviction: Redis refuses writes until it has room
)


def unavailable(exc: BaseException) -> str | None:
    """The dependency `exc` says is unavailable ("database", "message broker"), or None for any other error."""
    if isinstance(exc, DATABASE_ERRORS):
        return "database"
    if isinstance(exc, BROKER_ERRORS):
        return "message broker"
    return None


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


class ErrorResponsesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        failure = getattr(request, _FAILURE, None)
        if failure is not None and response.status_code == 500:
            # Raised by a middleware (a view's exception came through process_exception, or was left to Django).
            return self._answer(request, failure) or response
        if is_api(request) and response.status_code >= 400 and not _is_json(response):
            return _json_like(response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view's exception: 503 for an unavailable dependency; anything else goes on to Django's handling (its
        log entry with the traceback), and __call__ rewrites the answer of an API request."""
        if unavailable(exception):
            return self._answer(request, exception)
        return None

    def _answer(self, request: HttpRequest, exc: BaseException) -> HttpResponse | None:
        dependency = unavailable(exc)
        if dependency:
            # The error's type, not its text: a driver's message may quote a query or a connection string.
            logger.warning("%s %s: the %s is unavailable (%s); answered 503", request.method, request.path,
                           dependency, type(exc).__name__)  # fmt: skip
            return service_unavailable(request, dependency)
        if is_api(request):
            return JsonResponse({"detail": "internal error"}, status=500)
        return None


def service_unavailable(request: HttpRequest, dependency: str) -> HttpResponse:
    if is_api(request):
        detail = f"The {dependency} is unavailable right now; try again in a few seconds."
        response = JsonResponse({"detail": detail}, status=503)
    else:
        # Rendered without the request: context processors and the admin's context would query the database.
        page = loader.get_template("503.html").render({"dependency": dependency, "retry_after": RETRY_AFTER_SECONDS})
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _json_like(response: HttpResponse) -> JsonResponse:
    """The same status and headers that matter to a client (Allow, Retry-After), with a JSON body."""
    answer = JsonResponse({"detail": response.reason_phrase}, status=response.status_code)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if header in response:
            answer[header] = response[header]
    return answer


def _keep_failure(sender, request=None, **kwargs) -> None:
    """Django sends got_request_exception while it handles the exception (in its `except` block), whichever
    middleware raised it: keep it for ErrorResponsesMiddleware, which sees only the 500 response it became."""
    if request is not None:
        setattr(request, _FAILURE, sys.exc_info()[1])


got_request_exception.connect(_keep_failure, dispatch_uid="executor_project.errors")
