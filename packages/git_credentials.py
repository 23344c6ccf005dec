"""A Git repository's credentials: its deploy key pair, HTTPS token and webhook secret, encrypted at rest.

The deploy key is an ed25519 pair made here (cryptography): the public half is shown for the Git host's "deploy
keys" page, the private half is encrypted and never shown. Push webhooks are signed with the webhook secret the
way GitHub signs them (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`).

The HTTPS token and the pinned SSH host key are bound to one host, `GitRepository.credentials_host`: setting a
token binds it to the URL's host, and when the URL moves to another host both are forgotten
(`bind_credentials_to_url`), so changing the URL cannot send the token to someone else. The sync refuses to use
them for any other host (packages/git_sync.py). A deploy key needs no binding: SSH never reveals the private key,
and the signature it makes is good for that one connection only.
"""

import hashlib
import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import git_urls
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
    """Store an HTTPS token (bound to the URL's host) or webhook secret (not saved); an empty value keeps the
    current one."""
    if field == "https_token":
        bind_credentials_to_url(repository, new_token=value)
    elif value:
        setattr(repository, f"{field}_encrypted", encrypt(value))


def url_host(url: str) -> str:
    """The host credentials for `url` are bound to (GitUrl.authority); "" for a local or malformed URL."""
    try:
        return git_urls.parse_url(url).authority
    except git_urls.UnsafeGitUrl:
        return ""


def stored_token_fits(repository: GitRepository, url: str) -> bool:
    """Whether the stored HTTPS token may be sent to `url`: it was given for that URL's host."""
    host = url_host(url)
    return bool(repository.https_token_encrypted and host and repository.credentials_host == host)


def bind_credentials_to_url(repository: GitRepository, new_token: str = "") -> list[str]:
    """Keep the stored credentials bound to the host of the repository's (new) URL; not saved.

    If they were given for another host, the HTTPS token (unless `new_token` replaces it) and the pinned SSH
    host key are forgotten. A `new_token` is stored and bound to the URL's host. Returns what was forgotten, as
    sentences for the user.
    """
    host, bound = url_host(repository.url), repository.credentials_host
    forgotten = []
    if bound and bound != host:
        if repository.https_token_encrypted and not new_token:
            repository.https_token_encrypted = ""
            forgotten.append(f"the HTTPS token given for {bound} was dropped: enter the token for {host or 'it'}")
        if repository.ssh_known_hosts:
            repository.ssh_known_hosts = ""
            forgotten.append(f"the SSH host key pinned for {bound} was forgotten: the next sync pins the key "
                             f"{host or 'the new host'} shows")  # fmt: skip
        repository.credentials_host = ""
    if new_token:
        repository.https_token_encrypted = encrypt(new_token)
        repository.credentials_host = host
    return forgotten


def forget_host_key(repository: GitRepository) -> None:
    """Forget the pinned SSH host key (not saved): the next sync trusts the key the host shows, and pins it."""
    repository.ssh_known_hosts = ""
    if not repository.https_token_encrypted:
        repository.credentials_host = ""


# Where Git hosts put an HMAC-SHA256 of a push's body keyed with the webhook secret, and what precedes its hex.
_SIGNATURES = (("X-Hub-Signature-256", "sha256="), ("X-Forgejo-Signature", ""), ("X-Gitea-Signature", ""))


def push_is_proven(repository: GitRepository, body: bytes, headers) -> bool:
    """Whether the repository's webhook secret proves a push: GitHub's `X-Hub-Signature-256: sha256=<hex>`,
    Forgejo's `X-Forgejo-Signature` or Gitea's `X-Gitea-Signature` (the bare hex) of the body, or GitLab's
    `X-Gitlab-Token` (the secret itself). Compared in constant time; no secret set proves nothing."""
    if not repository.webhook_secret_encrypted:
        return False
    secret = decrypt(repository.webhook_secret_encrypted).encode()
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    for header, prefix in _SIGNATURES:
        value = headers.get(header)
        if value and value.startswith(prefix) and hmac.compare_digest(expected, value.removeprefix(prefix).encode()):
            return True
    token = headers.get("X-Gitlab-Token")
    return bool(token) and hmac.compare_digest(secret, token.encode())
