"""A TCP proxy in front of PostgreSQL that can blink: drop every connection and refuse new ones for a while.

The shared PostgreSQL must not be restarted (other test runs use it): a worker started with DATABASE_URL pointing
at this proxy sees what a restart looks like from outside (connections reset, then refused), and nobody else
does.
"""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit


class DatabaseProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """database_url with this proxy's port instead of PostgreSQL's."""
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()

    def down(self) -> None:
        """PostgreSQL goes away: every connection is cut and new ones are refused until up()."""
        self.up.clear()
        with self.lock:
            doomed, self.open = self.open, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def back(self) -> None:
        self.up.set()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.back()

    def blink(self, seconds: float) -> None:
        with self.outage():
            time.sleep(seconds)

    def close(self) -> None:
        self.listener.close()
        self.down()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up.is_set():
                client.close()  # as a server that is not there: the client sees the connection end at once
                self.refused += 1
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end the other too (the second pump to get here finds them closed)
            with self.lock:
                self.open.difference_update((source, target))
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
