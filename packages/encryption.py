"""Encryption of secret values at rest (cryptography's Fernet: AES-128-CBC + HMAC-SHA256, with a timestamp).

What is encrypted: the value of every ``packages.models.Secret`` (package, project and platform scope), stored as
a Fernet token in ``Secret.encrypted_value`` and decrypted only when a run needs it (``secrets_for()``, which
hands them to the script in argv[1]["secrets"]). Names, scopes and everything else stay in plain text.

Keys: ``settings.EXECUTOR_FERNET_KEYS``, newest first, read at every call (so ``override_settings`` and the
pytest-django ``settings`` fixture work). ``encrypt()`` and ``rotate()`` always use the first key;
``decrypt()`` tries each key in turn. A missing or malformed key raises ``EncryptionError`` on use: a secret
is never stored in clear and a token is never handed back as if it were the value.

Rotation, in this order:

1. Generate a key (``python -c "from packages.encryption import generate_key; print(generate_key())"``) and put
   it FIRST in EXECUTOR_FERNET_KEYS, keeping the old key(s) after it. Restart web and workers.
2. Run ``manage.py rotate_secrets``: it re-encrypts every stored value under the new key (``rotate()``).
3. Only then drop the old key. Dropping it before step 2 makes every value still encrypted under it unreadable:
   ``decrypt()`` raises ``EncryptionError`` for them; the only cure is to put the old key back (or re-enter the
   values).
"""

import re
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction

_GENERATE_HINT = 'generate one with `python -c "from packages.encryption import generate_key; print(generate_key())"`'

_UNREADABLE = (
    "A stored secret cannot be decrypted with the configured EXECUTOR_FERNET_KEYS (wrong key, or a key was "
    "dropped before rotation): put back the key it was encrypted with (after the current one), or enter the "
    "value again"
)

# The canonical form of a Fernet key: 32 bytes in urlsafe base64, one "=" of padding. Fernet itself ignores
# anything after the padding, so two keys pasted together without their comma would silently become the first.
_KEY_FORM = re.compile(r"[A-Za-z0-9_-]{43}=")


class EncryptionError(Exception):
    """A secret cannot be encrypted or decrypted. The message says what to do; it never holds a value or a key."""


def generate_key() -> str:
    """A new random Fernet key (32 bytes, urlsafe base64), as it goes into EXECUTOR_FERNET_KEYS."""
    return Fernet.generate_key().decode("ascii")


def check_keys(keys: list[str]) -> None:
    """Raise EncryptionError unless `keys` is a non-empty list of valid Fernet keys.

    A malformed key is named by its position (1-based), never printed: the message ends up in logs and in
    system-check output.
    """
    if not keys:
        raise EncryptionError(f"EXECUTOR_FERNET_KEYS is not set: secrets cannot be stored or read; {_GENERATE_HINT}")
    for position, key in enumerate(keys, start=1):
        try:
            if not _KEY_FORM.fullmatch(key):
                raise ValueError
            Fernet(key)
        except (ValueError, TypeError):
            # `from None`: the underlying error (binascii's, say) must not ride along with anything key-derived.
            raise EncryptionError(
                f"EXECUTOR_FERNET_KEYS key #{position} of {len(keys)} is not a valid Fernet key "
                f"(32 bytes, urlsafe base64): fix or remove it; {_GENERATE_HINT}"
            ) from None


@lru_cache(maxsize=8)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    # Building the Fernet objects decodes and splits every key; caching per key tuple keeps a call at ~10 µs.
    # A failed check raises, and lru_cache does not cache exceptions: a bad configuration fails on every use.
    check_keys(list(keys))
    return MultiFernet([Fernet(key) for key in keys])


def _configured() -> MultiFernet:
    return _multi_fernet(tuple(getattr(settings, "EXECUTOR_FERNET_KEYS", None) or ()))


def encrypt(value: str) -> str:
    """The Fernet token of `value` under the first configured key."""
    if not isinstance(value, str):
        raise TypeError(f"encrypt() takes a str, not {type(value).__name__}")
    return _configured().encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """The value of a token made by encrypt() or rotate() under any configured key.

    Raises EncryptionError if no configured key opens it; never returns the token itself.
    """
    fernet = _configured()
    try:
        # utf-8 rather than ascii: a garbled non-ASCII token must fail as InvalidToken, not as a
        # UnicodeEncodeError whose message quotes part of it.
        plaintext = fernet.decrypt(token.encode("utf-8"))
        return plaintext.decode("utf-8")
    except (InvalidToken, UnicodeDecodeError):
        raise EncryptionError(_UNREADABLE) from None


def rotate(token: str) -> str:
    """Re-encrypt a token under the first configured key (it may be under any configured key now)."""
    fernet = _configured()
    try:
        return fernet.rotate(token.encode("utf-8")).decode("ascii")
    except InvalidToken:
        raise EncryptionError(_UNREADABLE) from None


def rotate_all(queryset, field: str) -> int:
    """Re-encrypt `field` of every row of `queryset` under the first key; how many rows. One transaction: a value
    that cannot be decrypted stops the rotation (EncryptionError) with nothing half-done."""
    with transaction.atomic():
        rows = list(queryset.select_for_update())
        for row in rows:
            setattr(row, field, rotate(getattr(row, field)))
        queryset.model.objects.bulk_update(rows, [field])
    return len(rows)
