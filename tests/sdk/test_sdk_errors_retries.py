"""Error mapping and the retry loop, against a real HTTP server on 127.0.0.1."""

import pickle

import pytest
import requests

from seqrec_sdk import (
    AuthError,
    BadRequest,
    Client,
    ConnectionFailed,
    ModelNotFound,
    Overloaded,
    RetryPolicy,
    SeqrecError,
    ServerError,
    Timeout,
)
from seqrec_sdk.testing import Reply


def predictions(server):
    return [r for r in server.requests if r.path.startswith("/predictions")]


def test_bad_request_carries_server_message_and_is_not_retried(server, sleeps):
    with Client(server.url, retries=3) as client:
        with pytest.raises(BadRequest) as info:
            client.recommend([1, 2], k=5000)
    err = info.value
    assert err.status == 400 and err.error_type == "BadRequest"
    assert "k must be an int in 1..1000" in err.message
    assert err.url == f"{server.url}/predictions/seqrec"
    assert '"code": 400' in err.body
    assert err.request_id and err.request_id == server.requests[0].headers["x-request-id"]
    assert isinstance(err.__cause__, requests.HTTPError)
    assert len(predictions(server)) == 1 and sleeps == []


@pytest.mark.parametrize("status, body, cls", [
    (400, {"code": 400, "type": "InvalidKeyException",
           "message": "Token Authentication failed. Token either incorrect, expired, or not provided correctly"},
     AuthError),
    (401, None, AuthError),
    (403, None, AuthError),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: seqrec"},
     ModelNotFound),
    (413, None, BadRequest),
    (429, None, Overloaded),
    (500, {"code": 500, "type": "InternalServerError",
           "message": "RuntimeError('scoring failed')"}, ServerError),  # the handler's own 500
    (507, None, ServerError),
    (408, None, Timeout),
    (418, "teapot", SeqrecError),
])
def test_status_maps_to_error_class_without_retry(server, sleeps, status, body, cls):
    server.script(Reply(status, body))
    with Client(server.url, retries=3) as client:
        with pytest.raises(cls) as info:
            client.recommend([1])
    assert type(info.value) is cls and info.value.status == status
    assert isinstance(info.value.__cause__, requests.HTTPError)
    assert len(predictions(server)) == 1 and sleeps == []  # none of these is retried
    if isinstance(body, dict):
        assert info.value.message == body["message"]


@pytest.mark.parametrize("status, cls", [(503, Overloaded), (504, Timeout)])
def test_503_and_504_retried_then_raised(server, sleeps, status, cls):
    server.script(*[Reply(status)] * 10)
    with Client(server.url, retries=3) as client:
        with pytest.raises(cls) as info:
            client.recommend([1])
        assert client.stats.retries == 3 and client.stats.errors == 1
    assert info.value.status == status
    assert len(predictions(server)) == 4 and len(sleeps) == 3


def test_503_then_success_returns_the_answer(server, sleeps):
    server.script(Reply(503), Reply(503))
    with Client(server.url, retries=2) as client:
        recs = client.recommend([1, 2, 3], k=3)
    assert len(recs.items) == 3 and len(predictions(server)) == 3 and len(sleeps) == 2


# TorchServe 0.12's answer to each request of the batch a dying worker held (pretty-printed by
# its frontend): 500, or 507 when the worker's exit code was 137 (SIGKILL).
WORKER_DIED = '{\n  "code": %d,\n  "type": "InternalServerException",\n  "message": "Worker died."\n}'


@pytest.mark.parametrize("status", [500, 507])
def test_worker_died_is_retried_then_succeeds(server, sleeps, status):
    server.script(Reply(status, WORKER_DIED % status), Reply(status, WORKER_DIED % status))
    with Client(server.url, retries=2) as client:
        recs = client.recommend([1, 2, 3], k=3)
        assert client.stats.retries == 2 and client.stats.errors == 0
    assert len(recs.items) == 3 and not recs.fallback
    assert len(predictions(server)) == 3 and len(sleeps) == 2
    ids = {r.headers["x-request-id"] for r in predictions(server)}
    assert len(ids) == 1  # one logical request, repeated


def test_worker_died_backoff_is_the_503_backoff(server, sleeps):
    policy = RetryPolicy(retries=4, backoff_base=0.1, backoff_max=0.3)
    server.script(*[Reply(500, WORKER_DIED % 500)] * 4)
    with Client(server.url, retries=policy) as client:
        client.recommend([1])
    for attempt, slept in enumerate(sleeps):
        d = min(0.3, 0.1 * 2 ** attempt)
        assert d / 2 <= slept <= d
    assert len(sleeps) == 4


@pytest.mark.parametrize("body", [
    {"code": 500, "type": "InternalServerException", "message": "worker died"},
    {"code": 500, "type": "internalserverexception", "message": "  WORKER DIED.  "},
])
def test_worker_died_is_recognised_whatever_the_case(server, sleeps, body):
    server.script(Reply(500, body))
    with Client(server.url, retries=1) as client:
        client.recommend([1])
    assert len(predictions(server)) == 2 and len(sleeps) == 1


@pytest.mark.parametrize("status, body", [
    # the handler's per-request 500: deterministic, even if its text mentions a dead worker
    (500, {"code": 500, "type": "InternalServerError", "message": "RuntimeError('Worker died.')"}),
    (500, {"code": 500, "type": "InternalServerError", "message": "Worker died."}),
    # the frontend's other 500s and an out-of-memory 507 are not a dead worker either
    (500, {"code": 500, "type": "InternalServerException", "message": "Failed to load model"}),
    (500, {"code": 500, "type": "InternalServerException", "message": "Worker died. Retry later"}),
    (507, {"code": 507, "type": "InternalServerException", "message": "Out of memory"}),
    (500, "Worker died."),  # not TorchServe's JSON: a proxy's page, say
    (502, {"code": 502, "type": "InternalServerException", "message": "Worker died."}),
])
def test_other_server_errors_are_raised_at_once(server, sleeps, status, body):
    server.script(Reply(status, body), Reply(200, {"items": []}))
    with Client(server.url, retries=3) as client:
        with pytest.raises(ServerError) as info:
            client.recommend([1])
        assert client.stats.retries == 0 and client.stats.errors == 1
    assert info.value.status == status
    assert len(predictions(server)) == 1 and sleeps == []


def test_worker_died_retries_exhausted_raise_server_error(server, sleeps):
    server.script(*[Reply(507, WORKER_DIED % 507)] * 10)
    with Client(server.url, retries=2) as client:
        with pytest.raises(ServerError) as info:
            client.recommend([1])
        assert client.stats.retries == 2 and client.stats.errors == 1
    err = info.value
    assert err.status == 507 and err.message == "Worker died."
    assert err.error_type == "InternalServerException" and "Worker died." in str(err)
    assert isinstance(err.__cause__, requests.HTTPError)
    assert len(predictions(server)) == 3 and len(sleeps) == 2


def test_worker_died_with_fallback_retries_before_falling_back(server, sleeps):
    server.script(*[Reply(500, WORKER_DIED % 500)] * 2)
    with Client(server.url, retries=2, fallback=[7, 8, 9]) as client:
        recs = client.recommend([1], k=3)
        assert client.stats.fallbacks == 0
    assert not recs.fallback and len(predictions(server)) == 3


def test_backoff_grows_exponentially_with_jitter_and_cap(server, sleeps):
    server.script(*[Reply(503)] * 10)
    policy = RetryPolicy(retries=6, backoff_base=0.1, backoff_max=0.8)
    with Client(server.url, retries=policy) as client, pytest.raises(Overloaded):
        client.recommend([1])
    assert len(sleeps) == 6
    for attempt, slept in enumerate(sleeps):
        d = min(0.8, 0.1 * 2 ** attempt)
        assert d / 2 <= slept <= d  # equal jitter: [d/2, d]
    assert len(set(sleeps)) > 1  # jittered, not a fixed schedule


def test_retry_policy_delay_bounds():
    p = RetryPolicy(retries=3, backoff_base=0.05, backoff_max=0.3)
    assert p.delay(0, rng=lambda: 0.0) == pytest.approx(0.025)
    assert p.delay(0, rng=lambda: 1.0) == pytest.approx(0.05)
    assert p.delay(2, rng=lambda: 1.0) == pytest.approx(0.2)
    assert p.delay(10, rng=lambda: 1.0) == pytest.approx(0.3)  # capped
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


def test_connection_refused_retried_then_connection_failed(dead_url, sleeps):
    with Client(dead_url, retries=2) as client:
        with pytest.raises(ConnectionFailed) as info:
            client.recommend([1])
    assert info.value.status is None and info.value.url.startswith(dead_url)
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert len(sleeps) == 2  # three attempts


def test_dropped_connection_is_retried(server, sleeps):
    server.script(Reply(drop=True))
    with Client(server.url, retries=1) as client:
        recs = client.recommend([5, 6], k=2)
    assert len(recs.items) == 2 and len(predictions(server)) == 2 and len(sleeps) == 1


def test_read_timeout_is_not_retried(server, sleeps):
    server.script(Reply(delay=0.5))
    with Client(server.url, timeout=(1.0, 0.1), retries=3) as client:
        with pytest.raises(Timeout) as info:
            client.recommend([1])
    assert isinstance(info.value.__cause__, requests.Timeout)
    assert len(predictions(server)) == 1 and sleeps == []


def test_unreadable_200_is_a_server_error(server):
    server.script(Reply(200, "<html>proxy error</html>"), Reply(200, {"itemz": []}))
    with Client(server.url) as client:
        for _ in range(2):
            with pytest.raises(ServerError) as info:
                client.recommend([1])
            assert info.value.status == 200 and info.value.__cause__ is not None


def test_not_found_version(server):
    with Client(server.url) as client, pytest.raises(ModelNotFound, match="9.9 does not exist"):
        client.recommend([1], version="9.9")


def test_errors_survive_pickling_with_their_fields(server):
    err = BadRequest("k out of range", status=400, url="http://x/predictions/seqrec", body="{}",
                     request_id="r1", error_type="BadRequest")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BadRequest and back.status == 400 and back.request_id == "r1"
    assert str(back) == "k out of range [400 http://x/predictions/seqrec] (request_id=r1)"
