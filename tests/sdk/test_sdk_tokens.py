"""The key file as TorchServe's token API leaves it mid-rotation: the key is already swapped in
the server's memory while the file still holds the old one, or is truncated for its rewrite.
TokenSource.reload waits that moment out, and only that: a file that stays stale costs one wait."""
import json
import threading
import time

import pytest
from seqrec_sdk import AuthError
from seqrec_sdk import _tokens
from seqrec_sdk._tokens import TokenSource


def keys(inference: str) -> str:
    return json.dumps({"management": {"key": "m", "expiration time": "2030-01-01T00:00:00Z"},
                       "inference": {"key": inference, "expiration time": "2030-01-01T00:00:00Z"},
                       "API": {"key": "api"}})


def later(seconds: float, action) -> threading.Thread:
    t = threading.Timer(seconds, action)
    t.start()
    return t


def test_a_file_rewritten_just_after_the_refusal_is_waited_for(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text(keys("old"))
    src = TokenSource(token_file=str(f))
    later(0.2, lambda: f.write_text(keys("new")))
    t = time.monotonic()
    assert src.reload("inference", "old") and src.get("inference") == "new"
    assert 0.15 < time.monotonic() - t < _tokens.SETTLE_S


def test_a_half_written_file_is_read_again(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text(keys("old"))
    src = TokenSource(token_file=str(f))
    f.write_text(keys("new")[:17])  # truncated and partly written: not JSON yet
    later(0.2, lambda: f.write_text(keys("new")))
    assert src.reload("inference", "old") and src.get("inference") == "new"


def test_a_file_that_stays_unreadable_raises_after_the_wait(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text(keys("old"))
    src = TokenSource(token_file=str(f))
    f.write_text("")
    t = time.monotonic()
    with pytest.raises(AuthError, match="cannot read"):
        src.reload("inference", "old")
    assert time.monotonic() - t >= _tokens.SETTLE_S


def test_a_stale_file_costs_one_wait_until_it_changes(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text(keys("expired"))
    src = TokenSource(token_file=str(f))
    t = time.monotonic()
    assert not src.reload("inference", "expired")
    assert time.monotonic() - t >= _tokens.SETTLE_S
    t = time.monotonic()
    assert not src.reload("inference", "expired")  # the same file: no second wait
    assert time.monotonic() - t < 0.1
    f.write_text(keys("fresh"))  # the operator rotated at last
    assert src.reload("inference", "expired") and src.get("inference") == "fresh"
