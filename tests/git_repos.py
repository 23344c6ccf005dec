"""Git repositories made on the fly for tests (dulwich; no network): an FX package repository on branch main,
entries Git can hold but a working tree should not (symlinks, submodules), and an HTTPS Git server on 127.0.0.1
that records what it was sent."""

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dulwich import porcelain
from dulwich.index import commit_tree
from dulwich.object_store import iter_tree_contents
from dulwich.objects import Blob, Commit
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import WSGIRequestHandlerLogger, make_wsgi_chain

AUTHOR = b"Test Author <test@example.com>"
SYMLINK, GITLINK = 0o120000, 0o160000


class FxRepository:
    def __init__(self, path: Path):
        self.path = Path(path)
        repo = porcelain.init(self.path)
        repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/main")
        repo.close()

    @property
    def url(self) -> str:
        return self.path.as_uri()  # file:///...

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files at paths relative to the repository root; returns the commit id."""
        for relative, content in files.items():
            path = self.path / relative
            if content is None:
                porcelain.remove(self.path, paths=[str(path)])
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
                porcelain.add(self.path, paths=[str(path)])
        return porcelain.commit(self.path, message=message, author=AUTHOR, committer=AUTHOR).decode()

    def commit_entries(self, entries: dict[str, tuple[int, str]], message: str = "entries") -> str:
        """Commit HEAD's tree plus `entries`, written straight into the object store: path -> (mode, content).

        For a symlink (SYMLINK) the content is its target; for a submodule (GITLINK) a commit id of another
        repository; any other mode gets a blob of that content. The working tree and index are not updated, so
        make this the last commit of a test (or the only one)."""
        with Repo(str(self.path)) as repo:
            tree = {}
            if b"HEAD" in repo.refs:
                for entry in iter_tree_contents(repo.object_store, repo[repo.head()].tree):
                    tree[entry.path] = (entry.sha, entry.mode)
            for path, (mode, content) in entries.items():
                if mode == GITLINK:
                    sha = content.encode()
                else:
                    blob = Blob.from_string(content.encode())
                    repo.object_store.add_object(blob)
                    sha = blob.id
                tree[path.encode()] = (sha, mode)
            commit = Commit()
            commit.tree = commit_tree(repo.object_store, [(path, sha, mode) for path, (sha, mode) in tree.items()])
            commit.parents = [repo.head()] if b"HEAD" in repo.refs else []
            commit.author = commit.committer = AUTHOR
            commit.author_time = commit.commit_time = int(time.time())
            commit.author_timezone = commit.commit_timezone = 0
            commit.message = message.encode()
            repo.object_store.add_object(commit)
            repo.refs[b"HEAD"] = commit.id  # HEAD is refs/heads/main: the branch moves
            return commit.id.decode()

    def branch(self, name: str) -> None:
        porcelain.branch_create(self.path, name)

    def checkout(self, name: str) -> None:
        porcelain.checkout(self.path, name)


def fx_package(name: str, *, app: str = "print('hello')", schedule: str = "20 * * * *",
               trigger_events: list[str] | None = None, config: dict | None = None) -> dict[str, str]:  # fmt: skip
    """The files of one package directory in the FX layout."""
    manifest = {"description": f"{name} from Git", "schedule": schedule, "trigger_events": trigger_events or [],
                "execution_order": ["app.py"]}  # fmt: skip
    parameters = {"fields": [{"type": "text", "name": "region", "label": "Region", "default": "eu"}]}
    return {
        f"{name}/manifest.json": json.dumps(manifest),
        f"{name}/config.json": json.dumps(config or {"greeting": f"hello from {name}"}),
        f"{name}/parameters.json": json.dumps(parameters),
        f"{name}/app.py": app,
    }


def fake_dns(monkeypatch, answers: dict) -> None:
    """For the rest of the test, the host names in `answers` resolve to the given addresses (tests run without
    DNS); other names resolve as usual. A callable value is called at each lookup (to change the answer)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host in answers:
            answer = answers[host]
            address = answer() if callable(answer) else answer
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HttpsGitServer:
    """Serves `repository` at https://127.0.0.1:<port>/fx-packages.git with a self-signed certificate (trust it
    with `trust(monkeypatch)`), and records every request: `requests` holds (path, Authorization header or None).
    With `redirect_to`, every request is answered 302 to that URL prefix instead."""

    def __init__(self, repository: FxRepository | None, cert_dir: Path, redirect_to: str | None = None):
        self.requests: list[tuple[str, str | None]] = []
        self.redirect_to = redirect_to
        self.cert_file = _self_signed_certificate(cert_dir)
        backend = DictBackend({"/fx-packages.git": Repo(str(repository.path))} if repository else {})
        self._git = make_wsgi_chain(backend)
        self._server = make_server("127.0.0.1", 0, self._app, server_class=_ThreadingWSGIServer,
                                   handler_class=WSGIRequestHandlerLogger)  # fmt: skip
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, cert_dir / "key.pem")
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/fx-packages.git"

    def trust(self, monkeypatch) -> None:
        """Make this process's TLS clients (urllib3, hence dulwich) trust the server's certificate."""
        monkeypatch.setenv("SSL_CERT_FILE", str(self.cert_file))

    def _app(self, environ, start_response):
        self.requests.append((environ["PATH_INFO"], environ.get("HTTP_AUTHORIZATION")))
        if self.redirect_to:
            location = self.redirect_to + environ["PATH_INFO"].removeprefix("/fx-packages.git")
            start_response("302 Found", [("Location", location), ("Content-Length", "0")])
            return [b""]
        return self._git(environ, start_response)

    def __enter__(self) -> "HttpsGitServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _self_signed_certificate(directory: Path) -> Path:
    """A certificate for 127.0.0.1 and localhost that is its own CA; returns its path (key.pem beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "executor test Git server")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    cert_file = directory / "cert.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_file
