"""The SDK against a real TorchServe: two versions of a tiny trained model, token auth on.

    .venv/bin/python -m pytest -q tests/sdk/test_torchserve_integration.py

One server for the module (devtools/local_server.py, free loopback ports, its own directory). The
checks of sdk_contract_checks.py, which test_sdk_contract.py runs against the fake server, run
here for real, plus readiness, the management API, errors and the token file. The last test stops
the server: keep it last.
"""
import json

import pytest
import requests
from sdk_contract_checks import (
    check_fallback_when_server_stops,
    check_rotated_key_recovered,
    check_variants_land_on_their_versions,
)
from seqrec_sdk import AuthError, BadRequest, Client, Experiment, ModelNotFound, Variant
from torchserve_fixtures import requires_java, two_version_server

pytestmark = [pytest.mark.torchserve, requires_java]

# One worker per version on the 2 shared cores; a short maxBatchDelay because these requests come
# one at a time.
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    with two_version_server(tmp_path_factory.mktemp("sdk_torchserve"), MODEL_YAML) as (srv, _):
        yield srv


@pytest.fixture
def live(torchserve):
    """The module's server, still running (the fake `server` of conftest.py is another one)."""
    if torchserve.proc.poll() is not None:
        pytest.fail("the server was stopped by an earlier test: run this file in order")
    return torchserve


def test_each_variant_lands_on_its_version(live):
    counts = check_variants_land_on_their_versions(live.base_url, ("1.0", "2.0"),
                                                   token_file=str(live.key_file))
    assert set(counts) == {"v0", "v1"}


def test_users_outside_coverage_get_the_default_version(live):
    # Both arms on 2.0, so only users outside coverage can reach 1.0, the default.
    exp = Experiment("coverage-check", [Variant("a", "2.0"), Variant("b", "2.0")], coverage=0.5)
    exposures = []
    seen = {"in": 0, "out": 0}
    with Client(live.base_url, token_file=str(live.key_file), experiments=[exp],
                on_exposure=exposures.append) as client:
        for i in range(40):
            uid = f"coverage-user-{i}"
            recs = client.recommend([1, 2], k=3, user_id=uid)
            if exp.assign(uid) is None:
                assert (recs.variant, recs.model_version) == (None, "1.0"), (uid, recs)
                seen["out"] += 1
            else:
                assert recs.model_version == "2.0" and recs.variant in ("a", "b"), (uid, recs)
                seen["in"] += 1
    assert seen["in"] and seen["out"], seen
    assert len(exposures) == seen["in"]  # no exposure for users outside the experiment


def test_ready_checks_every_version_in_use(live):
    both = Experiment("ready-check", [Variant("a", "1.0"), Variant("b", "2.0")])
    with Client(live.base_url, token_file=str(live.key_file), experiments=[both]) as client:
        assert client.ready()
    missing = Experiment("ready-missing", [Variant("a", "1.0"), Variant("b", "3.0")])
    with Client(live.base_url, token_file=str(live.key_file), experiments=[missing]) as client:
        assert not client.ready()  # 3.0 is not registered


def test_versions_from_the_management_api(live):
    with Client(live.base_url, token_file=str(live.key_file),
                management_url=live.management_url) as client:
        versions = {v.version: v for v in client.versions()}
    assert set(versions) == {"1.0", "2.0"}
    for v in versions.values():
        assert (v.ready_workers, v.workers, v.batch_size, v.max_batch_delay_ms) == (1, 1, 4, 5), v


def test_bad_request_carries_the_servers_message(live):
    with Client(live.base_url, token_file=str(live.key_file)) as client:
        with pytest.raises(BadRequest) as bad:
            client.recommend([1, 2], k=1001)  # the SDK checks k > 0; the server's limit is 1000
        with pytest.raises(ModelNotFound) as missing:
            client.recommend([1, 2], k=3, version="3.0")
        assert client.stats.fallbacks == 0
    e = bad.value
    assert e.status == 400 and "k must be an integer in 1..1000, got 1001" in e.message, e
    assert e.url == f"{live.base_url}/predictions/seqrec" and "BadRequest" in e.body
    assert isinstance(e.__cause__, requests.HTTPError)
    assert missing.value.status == 404 and missing.value.url.endswith("/predictions/seqrec/3.0")


def test_wrong_key_in_the_token_file_is_recovered_by_rereading_it(live, tmp_path):
    """TorchServe refuses a wrong key with 400 InvalidKeyException; the client re-reads its token
    file once, and raises AuthError only when the file still holds a refused key."""
    keys = json.loads(live.key_file.read_text())
    token_file = tmp_path / "key_file.json"

    def write(inference_key):
        token_file.write_text(json.dumps({**keys, "inference": {**keys["inference"], "key": inference_key}}))

    write("not-the-key")
    with Client(live.base_url, token_file=str(token_file)) as client:
        with pytest.raises(AuthError) as refused:
            client.recommend([1, 2], k=3)
        assert refused.value.status == 400 and "InvalidKeyException" in refused.value.body
        write(live.key)  # the operator fixes the file: the next call re-reads it
        recs = client.recommend([1, 2], k=3)
        assert recs.model_version == "1.0" and not recs.fallback
        assert client.stats.token_reloads == 1  # the first re-read found the same wrong key


def test_rotated_key_is_recovered(live):
    """A real rotation: the token API issues a new inference key and TorchServe rewrites
    key_file.json; a client holding the old key recovers with one re-read."""
    def rotate():
        r = requests.get(f"{live.management_url}/token?type=inference",
                         headers={"Authorization": f"Bearer {live.api_key}"}, timeout=30)
        r.raise_for_status()

    before = live.key
    assert check_rotated_key_recovered(live.base_url, str(live.key_file), rotate) == 1
    assert live.key != before


def test_stopping_the_server_gives_fallbacks_then_ready_is_false(live):
    """Keep last: stops the module's live."""
    assert check_fallback_when_server_stops(live.base_url, live.stop,
                                            token_file=str(live.key_file)) == 20
    with Client(live.base_url, token_file=str(live.key_file), retries=0) as client:
        assert not client.ready()
