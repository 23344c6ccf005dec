"""One JSON POST to a notification webhook, by urllib3, to an address the URL policy checked.

The host is resolved and every address checked (executions/webhook_urls.py) just before the request, and the
connection goes to the checked address itself, with the URL's host in the Host header and, for https, in SNI and
the certificate check: a name that resolves elsewhere the second time (DNS rebinding) cannot reach the worker's own
network. No redirect is followed (its target was never checked), no proxy from the environment is used, the reply is
not read beyond its status, and connect and read each time out after EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS.

Error messages name the host at most, never the URL: its path or query is usually the token.
"""

import json
import logging

import urllib3
from django.conf import settings

from executions.webhook_urls import UnsafeWebhookUrl, WebhookUrl, check

USER_AGENT = "Executor-notifications/1"


class _WithoutRequestLines(logging.Filter):
    """urllib3 logs every request line at DEBUG, path and query included, which for a webhook is its token: with
    LOG_LEVEL=DEBUG that would put it in the worker's log. Its DEBUG lines are dropped (in this process only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("urllib3.connectionpool").addFilter(_WithoutRequestLines())


class WebhookFailed(Exception):
    """The POST did not succeed; the message is safe to store and show. `final`: retrying cannot help."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def post_json(url: str, body: dict, headers: dict[str, str] | None = None) -> int:
    """POST `body` as JSON to `url`; returns the HTTP status (2xx). Raises WebhookFailed otherwise."""
    try:
        parsed, addresses = check(url)
    except UnsafeWebhookUrl as exc:
        raise WebhookFailed(f"refused: {exc}", final=True) from None
    timeout = settings.EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS
    pool = _pool(parsed, addresses[0], timeout)
    data = json.dumps(body).encode("utf-8")
    request_headers = {"Host": parsed.origin.split("://", 1)[1], "Content-Type": "application/json",
                       "User-Agent": USER_AGENT, **(headers or {})}  # fmt: skip
    try:
        response = pool.urlopen("POST", parsed.target, body=data, headers=request_headers, retries=False,
                                redirect=False, preload_content=False, assert_same_host=False)  # fmt: skip
    except urllib3.exceptions.HTTPError as exc:
        raise WebhookFailed(f"{parsed.host}: {_describe(exc, timeout)}") from None
    finally:
        pool.close()
    response.release_conn()
    if 200 <= response.status < 300:
        return response.status
    # A 4xx other than these says the rule is wrong (the webhook was deleted, the token revoked): retrying is noise.
    final = 400 <= response.status < 500 and response.status not in (408, 425, 429)
    raise WebhookFailed(f"{parsed.host} answered HTTP {response.status}", final=final)


def _pool(parsed: WebhookUrl, address: str, timeout: float) -> urllib3.HTTPConnectionPool:
    options = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "maxsize": 1, "retries": False}
    if parsed.scheme == "https":
        return urllib3.HTTPSConnectionPool(address, parsed.port, server_hostname=parsed.host,
                                           assert_hostname=parsed.host, cert_reqs="CERT_REQUIRED",
                                           **options)  # fmt: skip
    return urllib3.HTTPConnectionPool(address, parsed.port, **options)


def _describe(exc: urllib3.exceptions.HTTPError, timeout: float) -> str:
    """What went wrong, in words that cannot quote the URL (urllib3's own messages include its path)."""
    # NewConnectionError is a kind of ConnectTimeoutError in urllib3 2: asked first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "could not connect (refused or unreachable)"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout} s"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS failed (certificate or handshake)"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "the connection broke off"
    return f"request failed ({type(exc).__name__})"
