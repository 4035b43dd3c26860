"""The round-trip counter the speed tests rely on: it must count waits, not bytes."""

from __future__ import annotations

import pytest
from helpers import psycopg
from roundtrips import RoundTripCounter, _ClientStream

# A start-up message (protocol 3.0, user "u"), then Parse, Bind, Execute, Sync,
# Flush (part of the Sync's wait), a simple Query, then Parse, Bind, Execute,
# Flush, Flush (one wait): three waits after the start-up.
_STARTUP = (len(b"user\0u\0\0") + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") \
    + b"user\0u\0\0"


def _message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


_CONVERSATION = _STARTUP + b"".join([
    _message(b"P", b"\0SELECT 1\0\0\0"), _message(b"B", b"\0\0" + bytes(6)),
    _message(b"E", b"\0" + bytes(4)), _message(b"S"), _message(b"H"),
    _message(b"Q", b"SELECT 1\0"),
    _message(b"P", b"\0SELECT 2\0\0\0"), _message(b"B", b"\0\0" + bytes(6)),
    _message(b"E", b"\0" + bytes(4)), _message(b"H"), _message(b"H"),
])


def test_the_parser_counts_the_same_however_the_bytes_are_split() -> None:
    whole = _ClientStream()
    assert whole.waits_in(_CONVERSATION) == 4  # start-up, Sync, Query, Flush
    for size in (1, 2, 3, 7):
        stream = _ClientStream()
        chunks = [_CONVERSATION[at:at + size] for at in range(0, len(_CONVERSATION), size)]
        assert sum(stream.waits_in(chunk) for chunk in chunks) == 4
        assert stream.pending == b""
        assert stream.body_left == 0


def test_an_ssl_request_before_the_start_up_is_one_wait_and_not_a_message() -> None:
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    stream = _ClientStream()
    assert stream.waits_in(ssl_request) == 1
    assert not stream.started
    assert stream.waits_in(_STARTUP + _message(b"S")) == 2


def test_statements_waited_for_one_by_one_count_one_each_and_a_pipeline_counts_once(
    nexuslims_postgres_server: str,
) -> None:
    with RoundTripCounter(nexuslims_postgres_server) as proxy, \
            psycopg.connect(proxy.url, autocommit=True) as conn:
        assert proxy.round_trips >= 1  # the start-up
        proxy.reset()
        for _ in range(3):
            conn.execute("SELECT 1").fetchall()
        assert proxy.round_trips == 3
        proxy.reset()
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (n,)) for n in range(5)]
        assert [c.fetchone() for c in cursors] == [(n,) for n in range(5)]
        assert proxy.round_trips == 1
        proxy.reset()
        with conn.pipeline():  # a result read inside the pipeline: a Flush, and a wait
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.execute("SELECT 2").fetchone() == (2,)
        assert proxy.round_trips == 3
        proxy.reset()
        with conn.transaction():
            conn.execute("SELECT 1")
        assert proxy.round_trips == 3  # BEGIN, SELECT, COMMIT


@pytest.mark.parametrize("url_end", ["", "?application_name=x"])
def test_the_proxy_url_keeps_the_query_and_turns_tls_off(url_end: str) -> None:
    with RoundTripCounter(f"postgresql://alice@db.example.org:6543/lims{url_end}#x") as proxy:
        assert proxy.url.startswith("postgresql://alice@127.0.0.1:")
        assert proxy.url.endswith(f"/lims{url_end}{'&' if url_end else '?'}"
                                  "sslmode=disable&gssencmode=disable")
