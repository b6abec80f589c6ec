"""Fixtures for the SDK tests: a real HTTP server on 127.0.0.1 (seqrec_sdk.testing), no mocks
of requests, and recorded instead of real backoff sleeps so that the suite stays fast."""

import socket
from typing import List

import pytest

import seqrec_sdk._transport as transport
from seqrec_sdk.testing import FakeSeqrecServer


@pytest.fixture(autouse=True)
def sleeps(monkeypatch) -> List[float]:
    """Backoff delays the client asked for, in order (nothing actually sleeps)."""
    recorded: List[float] = []
    monkeypatch.setattr(transport, "_sleep", recorded.append)
    return recorded


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    for name in ("SEQREC_TOKEN", "SEQREC_TOKEN_FILE", "SEQREC_MANAGEMENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    srv = FakeSeqrecServer(versions=("1.0", "2.0")).start()
    yield srv
    srv.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback address where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
