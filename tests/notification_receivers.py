"""Real receivers for notifications: an SMTP server (aiosmtpd) and an HTTP server (the standard library's), each in
a thread of the test process, keeping what they received for the test to read."""

import contextlib
import email
import email.policy
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    subject: str
    body: str


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler interface
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",)).get_content()
        self.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), parsed["subject"], body))
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server(port: int = 0) -> Iterator[tuple[int, list[ReceivedMail]]]:
    """A real SMTP server on 127.0.0.1 (`port`, or any free one); yields (port, the list of mails received)."""
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port or _free_port())
    controller.start()
    try:
        yield controller.port, inbox.messages
    finally:
        controller.stop()


@dataclass
class ReceivedPost:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class HttpReceiver:
    port: int
    posts: list[ReceivedPost] = field(default_factory=list)
    status: int = 200  # what it answers; a test sets 500 to make attempts fail

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    """A real HTTP server on 127.0.0.1 that records every POST (JSON body) and answers `receiver.status`."""
    receiver = HttpReceiver(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"null")
            receiver.posts.append(ReceivedPost(self.path, dict(self.headers), body))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):  # quiet: pytest shows the test's own output
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
