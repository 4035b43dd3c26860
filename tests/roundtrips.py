"""Count the round trips between a client and a PostgreSQL server.

:class:`RoundTripCounter` is a loopback TCP proxy in a thread: clients
connect to its URL, it relays every byte to the server and back, and counts
a round trip each time the client speaks after the server has answered.
A client that queues several statements and waits once (psycopg's pipeline
mode) makes one round trip; one that waits after each statement makes one
per statement. Used by the tests and by ``benchmarks/bench_sessions.py``.
"""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RoundTripCounter"]


class RoundTripCounter:
    """A counting proxy in front of the server of ``url`` (``postgresql://user@host:port/db``).

    Use as a context manager; :attr:`url` is the same URL through the proxy.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._server = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = f"{parts.username}@" if parts.username else ""
        self.url = urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{port}", parts.path,
                               parts.query, parts.fragment))
        self._lock = threading.Lock()
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def round_trips(self) -> int:
        """Round trips counted since the start (or the last :meth:`reset`)."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        with self._lock:
            self._count = 0

    def __enter__(self) -> RoundTripCounter:
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, None)
        # Each client socket maps to [its server socket, whether the server spoke last].
        pairs: dict[socket.socket, tuple[socket.socket, list[bool]]] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    if key.data is None:
                        client, _ = self._listener.accept()
                        server = socket.create_connection(self._server)
                        state = [True]  # the server speaks first (after the start-up)
                        pairs[client] = (server, state)
                        for sock, data in ((client, (server, state, True)),
                                           (server, (client, state, False))):
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            selector.register(sock, selectors.EVENT_READ, data)
                        continue
                    peer, state, from_client = key.data
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not chunk:
                        for sock in (key.fileobj, peer):
                            selector.unregister(sock)
                            sock.close()  # type: ignore[union-attr]
                        continue
                    if from_client and state[0]:
                        with self._lock:
                            self._count += 1
                    state[0] = not from_client
                    peer.sendall(chunk)
        finally:
            for key in list(selector.get_map().values()):
                if key.fileobj is not self._listener:
                    key.fileobj.close()  # type: ignore[union-attr]
            selector.close()
