"""What a browser's first visit to `make run`'s admin fetches: the login page and the stylesheets it links. Both
modes of `make run` must serve them (with DATABASE_URL set DEBUG is off, and without collectstatic's manifest the
page itself answered 500)."""

import re
import urllib.error
import urllib.request


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def login_page_and_stylesheets(base_url: str) -> dict[str, int]:
    """Status by path: /admin/login/, then each stylesheet it links (none when the page failed)."""
    try:
        with urllib.request.urlopen(f"{base_url}/admin/login/", timeout=10) as response:
            page = response.read().decode()
    except urllib.error.HTTPError as error:
        return {"/admin/login/": error.code}
    stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert stylesheets, page  # the admin links its base.css at least
    return {"/admin/login/": 200} | {path: status_of(base_url + path) for path in stylesheets}
