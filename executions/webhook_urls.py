"""Which webhook URLs a notification may be posted to: parsing and the policy, shared by the rule's admin form
(checked when saved) and the worker that posts (checked again at every attempt, since DNS answers change).

A rule's URL is typed by whoever may edit a package, and the worker posts to it from inside the platform's network,
so it must not turn the worker into a client of its own network: cloud metadata (169.254.169.254), loopback
services, private ranges. Every address the host resolves to must be public (the rule of packages/git_urls.py), and
the worker then connects to the very address it checked (workers/webhooks.py), so a name that resolves differently
the second time cannot slip through. Hosts listed in EXECUTOR_NOTIFICATION_ALLOWED_HOSTS (as written in the URL)
are exempt: an internal chat server, a test receiver. https only, except to those listed hosts.

No message here repeats the URL: its path or query is usually the webhook's token.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from packages.git_urls import non_public_reason

MAX_URL_LENGTH = 2000


class UnsafeWebhookUrl(ValueError):
    """The URL is malformed or not allowed; the message says why and names the host at most."""


@dataclass(frozen=True)
class WebhookUrl:
    scheme: str  # http or https
    host: str  # lower case; an IPv6 address without brackets
    port: int
    target: str  # path and query, what the request line asks for

    @property
    def origin(self) -> str:
        """scheme://host[:port]: what the admin shows, without the path and query that hold the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}[self.scheme]
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def parse(url: str) -> WebhookUrl:
    """Split `url`; raise UnsafeWebhookUrl when it is not an http(s) URL the policy allows (before resolving)."""
    url = (url or "").strip()
    if not url:
        raise UnsafeWebhookUrl("enter the webhook's URL")
    if len(url) > MAX_URL_LENGTH or any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise UnsafeWebhookUrl("the URL is too long or holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("the URL is malformed (or its port is not a number from 1 to 65535)") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise UnsafeWebhookUrl("the URL must start with https:// and name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("the URL cannot hold a user name or password")
    if scheme == "http" and not host_is_allowed(host):
        raise UnsafeWebhookUrl(f"plain http:// to {host} would send the webhook's token unencrypted: use https://")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookUrl(scheme, host, port or {"http": 80, "https": 443}[scheme], target)


def check(url: str | WebhookUrl) -> tuple[WebhookUrl, list[str]]:
    """Parse, resolve and apply the address rule; return the URL and the addresses it may be posted to."""
    parsed = url if isinstance(url, WebhookUrl) else parse(url)
    addresses = resolve(parsed.host, parsed.port)
    if not host_is_allowed(parsed.host):
        for address in addresses:
            reason = non_public_reason(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason:
                raise UnsafeWebhookUrl(
                    f"{parsed.host} resolves to {address}, which is {reason} address: workers do not post to their "
                    "own network unless the host is listed in EXECUTOR_NOTIFICATION_ALLOWED_HOSTS"
                )
    return parsed, addresses


def host_is_allowed(host: str) -> bool:
    allowed = {entry.strip().strip("[]").lower().rstrip(".") for entry in settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS}
    return host.lower().rstrip(".") in allowed - {""}


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UnsafeWebhookUrl(f"host {host} does not resolve ({reason})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeWebhookUrl(f"host {host} does not resolve")
    return addresses
