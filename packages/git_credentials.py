"""A Git repository's credentials: its deploy key pair, HTTPS token and webhook secret, encrypted at rest.

The deploy key is an ed25519 pair made here (cryptography): the public half is shown for the Git host's "deploy
keys" page, the private half is encrypted and never shown. Push webhooks are signed with the webhook secret the
way GitHub signs them (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`).
"""

import hashlib
import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .encryption import decrypt, encrypt
from .models import GitRepository


def regenerate_deploy_key(repository: GitRepository) -> None:
    """A new key pair for `repository` (not saved): the old public key stops working once removed from the host."""
    private = Ed25519PrivateKey.generate()
    private_openssh = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    repository.deploy_private_key_encrypted = encrypt(private_openssh.decode())
    repository.deploy_public_key = f"{public.decode()} executor-{repository.project.name.replace(' ', '-')}"


def set_secret_field(repository: GitRepository, field: str, value: str) -> None:
    """Store an HTTPS token or webhook secret; an empty value keeps the current one."""
    if value:
        setattr(repository, f"{field}_encrypted", encrypt(value))


def signature_is_valid(repository: GitRepository, body: bytes, header: str | None) -> bool:
    if not repository.webhook_secret_encrypted or not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(decrypt(repository.webhook_secret_encrypted).encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))
