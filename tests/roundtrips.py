"""Count the round trips between a client and a PostgreSQL server.

:class:`RoundTripCounter` is a loopback TCP proxy in a thread: clients
connect to its URL, it relays every byte to the server and back, and reads
the client's side of the conversation message by message. A round trip is a
message after which the client waits for the server's answer: the start-up,
a password, a simple ``Query``, a ``Sync`` (the end of a batch of extended
protocol messages: psycopg's pipeline sends many statements and one Sync),
a function call, the end of a ``COPY``, and a ``Flush`` that asks for the
answers so far (one right after a Sync is part of the Sync's wait).
Counting messages, not the turns seen on the wire, keeps the count exact
however the bytes are split. Used by the tests and by
``benchmarks/bench_sessions.py``.
"""

from __future__ import annotations

import contextlib
import heapq
import selectors
import socket
import threading
import time
from types import TracebackType
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RoundTripCounter"]

# Messages of the frontend protocol after which the client waits for an answer:
# Query, Sync, PasswordMessage (and SASL responses), FunctionCall, CopyDone, CopyFail.
_WAITS = frozenset(b"QSpFcf")
# A Flush asks for the answers so far: a wait, unless it only follows a Sync
# (whose answer the client waits for anyway) or another Flush.
_FLUSH, _FLUSHED = ord("H"), frozenset(b"SH")
# Untyped requests before the start-up message (SSLRequest, GSSENCRequest) are
# answered with one byte; a CancelRequest is answered by closing.
_PRE_STARTUP = {80877103, 80877104, 80877102}


class _ClientStream:
    """Where the parser stands in what one client has sent."""

    def __init__(self) -> None:
        self.pending = b""  # an incomplete message header
        self.body_left = 0  # bytes of the current message still to pass
        self.started = False  # the start-up message has passed: messages are typed now
        self.previous = 0  # the type of the last typed message

    def waits_in(self, chunk: bytes) -> int:
        """Return how many waiting messages start in ``chunk``."""
        data, at, waits = self.pending + chunk, 0, 0
        while True:
            step = min(self.body_left, len(data) - at)
            at, self.body_left = at + step, self.body_left - step
            header = 5 if self.started else 8
            if self.body_left or len(data) - at < header:
                break
            if self.started:
                kind = data[at]
                waits += kind in _WAITS or (kind == _FLUSH and self.previous not in _FLUSHED)
                self.previous = kind
                self.body_left = int.from_bytes(data[at + 1:at + 5], "big") - 4
            else:
                code = int.from_bytes(data[at + 4:at + 8], "big")
                self.started = code not in _PRE_STARTUP
                waits += 1
                self.body_left = int.from_bytes(data[at:at + 4], "big") - 8
            at += header
        self.pending = data[at:]
        return waits


class RoundTripCounter:
    """A counting proxy in front of the server of ``url`` (``postgresql://user@host:port/db``).

    Use as a context manager; :attr:`url` is the same URL through the proxy
    (without TLS, so that the proxy can read the messages). It can also play
    a network: ``delay`` seconds each way (a round trip costs twice that),
    :meth:`stall` (a black hole: everything sent is swallowed, nothing
    answered, no connection closed), :meth:`cut` (every connection dropped).
    """

    def __init__(self, url: str, *, delay: float = 0.0) -> None:
        self.delay = delay
        self._stalled = False
        self._cut = False
        self._lose_answer = False
        self._due: list[tuple[float, int, socket.socket, bytes]] = []  # delayed bytes
        self._sequence = 0
        parts = urlsplit(url)
        self._server = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = f"{parts.username}@" if parts.username else ""
        query = "&".join(filter(None, [parts.query, "sslmode=disable&gssencmode=disable"]))
        self.url = urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{port}", parts.path,
                               query, ""))
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

    def stall(self) -> None:
        """Swallow everything from now on, answering nothing (until :meth:`resume`)."""
        self._stalled = True

    def resume(self) -> None:
        """Relay again."""
        self._stalled = False

    def cut(self) -> None:
        """Drop every connection relayed now (as a restart or a cable pulled would)."""
        self._cut = True

    def lose_next_answer(self) -> None:
        """Drop the connection that the server answers next, the answer with it.

        What was sent reached the server (a COMMIT was done), but the client
        never hears so: the case a retry must settle by reading.
        """
        self._lose_answer = True

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
        try:
            while not self._stop.is_set():
                if self._cut:
                    self._cut = False
                    for key in list(selector.get_map().values()):
                        if key.fileobj is not self._listener:
                            selector.unregister(key.fileobj)
                            key.fileobj.close()  # type: ignore[union-attr]
                    self._due.clear()
                wait = 0.05 if not self._due else max(0.0, min(0.05, self._due[0][0]
                                                                   - time.monotonic()))
                for key, _ in selector.select(timeout=wait):
                    if key.data is None:
                        client, _ = self._listener.accept()
                        server = socket.create_connection(self._server)
                        for sock, data in ((client, (server, _ClientStream())),
                                           (server, (client, None))):
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            selector.register(sock, selectors.EVENT_READ, data)
                        continue
                    peer, stream = key.data
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    if source.fileno() == -1:  # closed earlier in this round, with its peer
                        continue
                    try:
                        chunk = source.recv(65536)
                    except OSError:  # reset by one side: the conversation is over
                        chunk = b""
                    if stream is not None and chunk:  # counted before it is relayed
                        waits = stream.waits_in(chunk)
                        with self._lock:
                            self._count += waits
                    if chunk and self._stalled:  # a black hole
                        continue
                    if chunk and stream is None and self._lose_answer:  # the server's answer
                        self._lose_answer = False
                        chunk = b""  # dropped: the connection is closed below
                    try:
                        if chunk and self.delay:
                            self._sequence += 1
                            heapq.heappush(self._due, (time.monotonic() + self.delay,
                                                       self._sequence, peer, chunk))
                            continue
                        if chunk:
                            peer.sendall(chunk)
                            continue
                    except OSError:
                        pass
                    for sock in (source, peer):
                        if sock.fileno() != -1:
                            selector.unregister(sock)
                            sock.close()
                while self._due and self._due[0][0] <= time.monotonic():
                    _, _, peer, chunk = heapq.heappop(self._due)
                    if peer.fileno() != -1:
                        with contextlib.suppress(OSError):
                            peer.sendall(chunk)
        finally:
            for key in list(selector.get_map().values()):
                if key.fileobj is not self._listener:
                    key.fileobj.close()  # type: ignore[union-attr]
            selector.close()
