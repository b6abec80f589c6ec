"""The integration checks of sdk_contract_checks.py, run here against the fake server."""

import json

from sdk_contract_checks import (
    check_fallback_when_server_stops,
    check_rotated_key_recovered,
    check_variants_land_on_their_versions,
)
from seqrec_sdk.testing import FakeSeqrecServer


def test_variants_land_on_their_versions(server):
    counts = check_variants_land_on_their_versions(server.url, ("1.0", "2.0"))
    assert set(counts) == {"v0", "v1"}


def test_rotated_key_recovered(tmp_path):
    key_file = tmp_path / "key_file.json"

    def write(key):
        key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": key},
                                        "API": {"key": "a"}}))

    write("k1")
    with FakeSeqrecServer(token="k1") as server:
        def rotate():
            server.token = "k2"
            write("k2")
        assert check_rotated_key_recovered(server.url, str(key_file), rotate) == 1


def test_fallback_when_server_stops():
    server = FakeSeqrecServer().start()
    try:
        assert check_fallback_when_server_stops(server.url, server.stop) == 20
    finally:
        server.stop()
