"""Which Git URLs the server may fetch from: parsing and the policy, with no Django model in sight.

A repository's URL is typed by whoever may edit the repository, so it is hostile input: it must not make the
server read its own disk (`file://`, local paths), talk to its internal network (a name or address that resolves
to loopback, link-local, private, ... addresses), or send anything unencrypted (`http://`, `git://`).

- `parse_url(url)` splits a URL the way Git reads it: `https://host[:port]/path`, `ssh://[user@]host[:port]/path`,
  scp-style `[user@]host:path` (a colon before any slash), `file:///path`, or a local path. Anything else, a
  password or user name in an https URL, a query or fragment, or control characters is refused. The sync builds
  its dulwich client from these parts (packages/git_sync.py), never from the raw string, so this parser and the
  transport cannot disagree about where the URL points.
- `check_url(url)` applies the policy: https and ssh only; local only with EXECUTOR_GIT_ALLOW_LOCAL; the host must
  resolve to public addresses only, unless it is listed (as written in the URL, name or address) in
  EXECUTOR_GIT_ALLOWED_HOSTS. Forms check it when a repository is saved, and the sync checks it again, because
  DNS answers change.
- `check_address(host, address)` is the same address rule for one address: the sync calls it on the address a
  connection actually reached, which defeats a name that resolves differently the second time.

Every message names the host at most, never the whole URL: a URL may hold a password someone pasted into it.
"""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from django.conf import settings

HTTPS, SSH, LOCAL = "https", "ssh", "local"
DEFAULT_PORTS = {HTTPS: 443, SSH: 22}

_HOST_NAME = re.compile(r"^(?=.{1,253}\.?\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")  # fmt: skip
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SCP_STYLE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]/]*\]|[^@/:\[\]]+):(?P<path>.*)\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_OFF = ("local paths and file:// URLs read the server's own disk and are turned off "
              "(EXECUTOR_GIT_ALLOW_LOCAL)")  # fmt: skip


class UnsafeGitUrl(ValueError):
    """The URL is malformed or not allowed; the message says why (and never repeats the URL)."""


@dataclass(frozen=True)
class GitUrl:
    """A parsed Git URL. `host` is lower case, an IPv6 address without brackets; `path` is what the remote is
    asked for (ssh: as typed, relative to the login's home when scp-style; local: a file system path)."""

    kind: str  # HTTPS, SSH or LOCAL
    path: str
    host: str = ""
    port: int | None = None
    username: str | None = None

    @property
    def effective_port(self) -> int | None:
        return self.port or DEFAULT_PORTS.get(self.kind)

    @property
    def authority(self) -> str:
        """The host credentials are bound to, as in a URL: `host`, or `host:port` for a port other than the
        scheme's default."""
        if not self.host:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6: bracketed, as in a URL
        if self.port and self.port != DEFAULT_PORTS[self.kind]:
            return f"{host}:{self.port}"
        return host


def parse_url(url: str) -> GitUrl:
    """Split `url` the way Git reads it; raise UnsafeGitUrl for anything malformed or of another scheme."""
    url = (url or "").strip()
    if not url:
        raise UnsafeGitUrl("enter a URL")
    if _CONTROL.search(url):
        raise UnsafeGitUrl("a URL cannot contain spaces, control characters or backslashes")
    if "://" in url:
        return _parse_with_scheme(url)
    scp = _SCP_STYLE.match(url)
    if scp:  # git's rule: a colon before any slash makes it scp-style ssh
        host = _host(scp["host"].strip("[]") if scp["host"].startswith("[") else scp["host"])
        if not scp["path"]:
            raise UnsafeGitUrl("the URL names no repository path after the ':'")
        return GitUrl(SSH, scp["path"], host=host, username=_user(scp["user"]))
    return GitUrl(LOCAL, url)


def check_url(url: str | GitUrl, *, resolve: bool = True) -> GitUrl:
    """Parse and apply the policy (module docstring); return the parsed URL or raise UnsafeGitUrl.

    With `resolve`, the host is looked up (socket.getaddrinfo) and every address it resolves to must be public,
    unless the host is listed in EXECUTOR_GIT_ALLOWED_HOSTS.
    """
    parsed = url if isinstance(url, GitUrl) else parse_url(url)
    if parsed.kind == LOCAL:
        if not settings.EXECUTOR_GIT_ALLOW_LOCAL:
            raise UnsafeGitUrl(_LOCAL_OFF)
        return parsed
    if resolve and not host_is_allowed(parsed.host):
        for address in resolve_host(parsed.host, parsed.effective_port):
            check_address(parsed.host, address)
    return parsed


def host_is_allowed(host: str) -> bool:
    """Listed in EXECUTOR_GIT_ALLOWED_HOSTS (name or address, as written in the URL): internal addresses are fine."""
    allowed = {entry.strip().strip("[]").lower() for entry in settings.EXECUTOR_GIT_ALLOWED_HOSTS}
    return host.lower().rstrip(".") in {entry.rstrip(".") for entry in allowed if entry}


def resolve_host(host: str, port: int | None) -> list[str]:
    """The addresses `host` resolves to now; UnsafeGitUrl if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UnsafeGitUrl(f"host {host} does not resolve ({reason})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeGitUrl(f"host {host} does not resolve")
    return addresses


def check_address(host: str, address: str) -> None:
    """Raise UnsafeGitUrl if `address` (one that `host` resolved or connected to) is not public and `host` is not
    listed in EXECUTOR_GIT_ALLOWED_HOSTS."""
    if host_is_allowed(host):
        return
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of the address
    reason = non_public_reason(ip)
    if reason:
        shown = host if _same_address(host, ip) else f"host {host} resolves to {address}, which"
        raise UnsafeGitUrl(
            f"{shown} is {reason} address: the server does not fetch from its own network unless the host is "
            "listed in EXECUTOR_GIT_ALLOWED_HOSTS"
        )


def _same_address(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


def non_public_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of not-public address `ip` is ("a loopback"), or None for a public unicast address."""
    if ip.version == 6:
        # IPv4 addresses inside IPv6 ones reach the IPv4 address: judge that one.
        teredo = ip.teredo
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(teredo or ())]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for inner in filter(None, embedded):
            reason = non_public_reason(inner)
            if reason:
                return reason
    for attribute, label in (("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
                             ("is_link_local", "a link-local"), ("is_multicast", "a multicast"),
                             ("is_private", "a private"), ("is_reserved", "a reserved")):  # fmt: skip
        if getattr(ip, attribute):
            return label
    return None if ip.is_global else "a non-public"  # e.g. 100.64.0.0/10, shared address space


def _parse_with_scheme(url: str) -> GitUrl:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "http":
        raise UnsafeGitUrl("plain http:// is not allowed (code and tokens would travel unencrypted): use https://")
    if scheme == "git":
        raise UnsafeGitUrl("git:// is not allowed (unauthenticated and unencrypted): use https:// or ssh://")
    if scheme not in ("https", "ssh", "file"):
        raise UnsafeGitUrl(f"unsupported URL scheme {scheme[:20]!r}: use https://, ssh:// or git@host:org/repo.git")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise UnsafeGitUrl("a Git URL cannot have a query (?) or fragment (#)")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UnsafeGitUrl("a file:// URL cannot name another host")
        if not settings.EXECUTOR_GIT_ALLOW_LOCAL:
            raise UnsafeGitUrl(_LOCAL_OFF)
        return GitUrl(LOCAL, unquote(parts.path))
    if parts.password is not None:
        raise UnsafeGitUrl("a URL cannot hold a password: use the HTTPS token field (stored encrypted)")
    if scheme == "https" and parts.username is not None:
        raise UnsafeGitUrl("an https:// URL cannot hold a user name or token: use the HTTPS token field")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeGitUrl("the URL's port is not a number from 1 to 65535") from None
    if port == 0:
        raise UnsafeGitUrl("the URL's port is not a number from 1 to 65535")
    path = parts.path
    if not path.startswith("/") or path.startswith("//") or path == "/":
        # "//" would let urljoin (dulwich's HTTP client) read the path as another host.
        raise UnsafeGitUrl("the URL names no repository path (https://host/org/repo.git)")
    host = _host(parts.hostname or "")
    kind = HTTPS if scheme == "https" else SSH
    return GitUrl(kind, path, host=host, port=port, username=_user(parts.username) if kind == SSH else None)


def _host(host: str) -> str:
    host = host.lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_NAME.match(host):
        raise UnsafeGitUrl(f"{host[:100]!r} is not a host name (letters, digits, '-' and '.')")
    return host.rstrip(".")


def _user(user: str | None) -> str | None:
    if user is None:
        return None
    user = unquote(user)
    if not _USER_NAME.match(user):
        raise UnsafeGitUrl("the user name in the URL may hold letters, digits, '_', '.' and '-' only")
    return user
