"""Typed readers for environment variables.

Each reader returns a parsed value or raises ImproperlyConfigured naming the variable and what is wrong with
it, so a typo in a deployment fails at start-up instead of surfacing later as odd behaviour.
"""

import base64
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_REDIS_SCHEMES = {"redis", "rediss", "redis+socket"}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"{name} must be set")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum of {maximum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks around items are dropped; empty items are refused, an empty value is []."""
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    if not raw.strip():
        return []
    items = [item.strip() for item in raw.split(",")]
    if any(not item for item in items):
        # Not echoing the value: lists hold keys too (EXECUTOR_FERNET_KEYS).
        empty = ", ".join(str(n) for n, item in enumerate(items, start=1) if not item)
        raise ImproperlyConfigured(f"{name} has an empty item (position {empty})")
    return items


def env_database(name: str, default: str) -> dict:
    """A database URL (postgres://, sqlite:///path) parsed into Django's DATABASES entry."""
    url = os.environ.get(name, default)
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a usable database URL: {exc}") from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured(f"{name} has an unsupported scheme")
    return config


# A request rate as django-ratelimit reads it: a count per s, m, h or d, optionally several of them.
RATE_FORMAT = re.compile(r"[1-9]\d*/(?:[1-9]\d*)?[smhd]")


def env_rate(name: str, default: str) -> str:
    """A request rate (RATE_FORMAT: "600/m", "20/s", "1000/15m"); "" or "off": no limit (returned as "")."""
    value = os.environ.get(name, default).strip()
    if value.lower() in {"", "off"}:
        return ""
    if not RATE_FORMAT.fullmatch(value):
        raise ImproperlyConfigured(f'{name} must be a count per period like "600/m", "20/s" or "1000/15m", or off')
    return value


def env_redis_url(name: str, default: str) -> str:
    url = os.environ.get(name, default)
    scheme = urlsplit(url).scheme
    if scheme not in _REDIS_SCHEMES:
        raise ImproperlyConfigured(
            f"{name} must start with one of {', '.join(sorted(s + '://' for s in _REDIS_SCHEMES))}, got {scheme!r}"
        )
    return url


def redis_py_url(broker_url: str) -> str:
    """kombu's spelling of a Redis URL in redis-py's: `redis+socket:///path?virtual_host=3` is `unix:///path?db=3`."""
    parts = urlsplit(broker_url)
    if parts.scheme not in {"redis+socket", "socket"}:
        return broker_url
    query = urlencode([("db" if name == "virtual_host" else name, value) for name, value in parse_qsl(parts.query)])
    return f"unix://{parts.path}" + (f"?{query}" if query else "")  # (urlunsplit would drop the //)


def quick_start_fernet_key(data_dir: Path) -> str:
    """The quick start's secret-encryption key: generated once into the data directory, then reused."""
    path = data_dir / "fernet.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # A Fernet key is 32 random bytes, urlsafe-base64 encoded. Written aside, then linked into place: link()
        # fails if the file exists, so web, worker and beat starting together all end up with the same key.
        draft = data_dir / f"fernet.key.{os.getpid()}"
        draft.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
