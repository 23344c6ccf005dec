"""The webhook POST over TLS (workers/webhooks.py): it connects to the address it checked, yet verifies the
certificate against the URL's host name (SNI and hostname check), as Slack's and Teams' endpoints need.

A real HTTPS server on 127.0.0.1 with a certificate for hooks.test made here; only name resolution is stood in for
(hooks.test -> 127.0.0.1), and the test's own CA is trusted through SSL_CERT_FILE, as OpenSSL reads it."""

import datetime
import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from workers.webhooks import WebhookFailed, post_json


def certificate(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (its own CA); returns (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_file), str(key_file)


@pytest.fixture
def https_server(tmp_path):
    """An HTTPS server on 127.0.0.1 presenting a certificate for hooks.test; yields (port, received bodies)."""
    cert_file, key_file = certificate(tmp_path, "hooks.test")
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append((self.headers["Host"], self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received, cert_file
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hooks_test_is_local(monkeypatch, settings):
    """hooks.test resolves to 127.0.0.1, a host listed as allowed (it is this machine)."""
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["hooks.test"]
    monkeypatch.setattr("executions.webhook_urls.resolve", lambda host, port: ["127.0.0.1"])


def test_it_posts_over_tls_to_the_checked_address_verifying_the_urls_host(
    https_server, hooks_test_is_local, monkeypatch
):
    port, received, cert_file = https_server
    monkeypatch.setenv("SSL_CERT_FILE", cert_file)

    assert post_json(f"https://hooks.test:{port}/services/xoxb-1", {"text": "hi"}) == 204

    assert received == [(f"hooks.test:{port}", b'{"text": "hi"}')]


def test_a_certificate_the_worker_does_not_trust_fails_the_attempt(https_server, hooks_test_is_local, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    port, received, _ = https_server
    other_ca, _ = certificate(tmp_path, "elsewhere.test")
    monkeypatch.setenv("SSL_CERT_FILE", other_ca)

    with pytest.raises(WebhookFailed, match=r"^hooks.test: TLS failed \(certificate or handshake\)$"):
        post_json(f"https://hooks.test:{port}/services/xoxb-1", {"text": "hi"})
    assert received == []


def test_a_certificate_for_another_name_fails_the_attempt(https_server, hooks_test_is_local, settings, monkeypatch):
    """The connection goes to an address, but the name checked is the URL's: a trusted certificate for hooks.test
    does not do for other.test (were the hostname check off, the address would be enough)."""
    port, received, cert_file = https_server
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["hooks.test", "other.test"]
    monkeypatch.setenv("SSL_CERT_FILE", cert_file)

    with pytest.raises(WebhookFailed, match="^other.test: TLS failed"):
        post_json(f"https://other.test:{port}/services/xoxb-1", {"text": "hi"})
    assert received == []
