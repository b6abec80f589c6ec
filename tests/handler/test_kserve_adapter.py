"""The KServe adapter (handler/seqrec_kserve.py) in process: v2 tensors mapped onto the request
contract, and the handler driven through TorchServe's own envelope classes (kservev2, kserve),
exactly as a worker started with TS_SERVICE_ENVELOPE runs it. A real TorchServe started that way:
test_kserve_torchserve.py.

    .venv/bin/python -m pytest -q tests/handler/test_kserve_adapter.py
"""
import json

import numpy as np
import pytest
from handler_fixtures import run_batch
from ts.context import RequestProcessor
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from handler import seqrec_kserve as kserve
from handler.seqrec_contract import BadRequest, parse_request


def tensor(name, data, datatype="INT64", shape=None):
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def through_envelope(envelope_cls, loaded, body):
    """One request through the envelope and the handler -> (status, answer dict)."""
    h, ctx = loaded
    ctx.request_processor = [RequestProcessor({})]
    ctx.request_ids = {0: "req-0"}
    ctx.manifest = {"model": {"modelName": "seqrec", "modelVersion": "1.0"}}
    (answer,) = envelope_cls(h.handle).handle([{"body": json.loads(json.dumps(body))}], ctx)
    assert not hasattr(ctx, "input_names")  # the envelope consumed what respond() left
    return ctx.get_response_status(0)[0], json.loads(json.dumps(answer))  # as TorchServe sends it


def v2(loaded, *inputs, **extra):
    return through_envelope(KServev2Envelope, loaded, {"inputs": list(inputs), **extra})


def outputs(answer):
    return {o["name"]: o for o in answer["outputs"]}


def plain(loaded, body):
    h, ctx = loaded
    [out] = run_batch(h, ctx, [body])
    return json.loads(out)


def some_ids(loaded, n=4):
    cat = loaded[0].catalogue
    return cat.decode(cat.rows[:n].numpy())


# ---- v2 tensors -> the contract's body (no model)
def test_v2_body_maps_every_input():
    body = kserve.v2_body([
        tensor("history", [[5, 6, 7]], shape=[1, 3]), tensor("k", [3], "INT32"),
        tensor("exclude_seen", [False], "BOOL"), tensor("exclude", [9]), tensor("candidates", [5, 8, 9]),
        tensor("now", [1_700_000_600.5], "FP64"), tensor("user_id", "u-1", "BYTES", [1]),
        tensor("timestamps", [1.0, 2.0, 3.0], "FP64"), tensor("event_types", ["view", "", "buy"], "BYTES", [1, 3]),
        tensor("strengths", [1, 2, 3], "INT32")])
    assert body == {"history": [{"item_id": 5, "timestamp": 1.0, "event_type": "view", "strength": 1},
                                {"item_id": 6, "timestamp": 2.0, "event_type": "", "strength": 2},
                                {"item_id": 7, "timestamp": 3.0, "event_type": "buy", "strength": 3}],
                    "k": 3, "exclude_seen": False, "exclude": [9], "candidates": [5, 8, 9],
                    "now": 1_700_000_600.5, "user_id": "u-1"}
    parse_request(body)  # and the contract takes it


@pytest.mark.parametrize("inputs, fragment", [
    ([], "input 'history' is required"),
    ([tensor("history", [1]), tensor("K", [1])], "unknown input 'K'"),
    ([tensor("history", [1]), tensor("history", [2])], "given twice"),
    ([tensor("history", [1.5], "FP32")], "datatype must be one of"),
    ([tensor("history", [1.5])], "history[0]: datatype INT64, got 1.5"),
    ([tensor("history", [True], "INT64")], "history[0]: datatype INT64, got True"),
    ([tensor("history", "a", "BYTES", [3])], "send it nested: shape [1, 3]"),
    ([tensor("history", [[1, 2], [3, 4]], shape=[2, 2])], "one v2 request is one user's request"),
    ([tensor("history", [1, 2]), tensor("k", [1, 2], "INT32")], "k must hold one value"),
    ([tensor("history", [1, 2]), tensor("timestamps", [1.0], "FP64")], "timestamps has 1 elements, history 2"),
    ([tensor("history", [1]), tensor("exclude_seen", [1], "INT64")], "exclude_seen: datatype must be one of ['BOOL']"),
])
def test_v2_body_refuses_with_a_message(inputs, fragment):
    with pytest.raises(BadRequest) as e:
        kserve.v2_body(inputs)
    assert fragment in str(e.value)


def test_batch_warning_only_for_kserve_envelopes_with_batching(monkeypatch):
    monkeypatch.delenv("TS_SERVICE_ENVELOPE", raising=False)
    assert kserve.batch_warning(16) is None
    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "kservev2")
    assert "batchSize 16" in kserve.batch_warning(16) and kserve.batch_warning(1) is None


# ---- the handler behind TorchServe's kservev2 envelope
def test_v2_answers_what_the_plain_contract_answers(loaded):
    ids = some_ids(loaded)
    status, answer = v2(loaded, tensor("history", ids + [424242]), tensor("k", [5], "INT32"), id="abc")
    want = plain(loaded, {"history": ids + [424242], "k": 5})
    assert status == 200
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("abc", "seqrec", "1.0")
    out = outputs(answer)
    assert list(out) == list(kserve.OUTPUTS)
    assert out["item_ids"] == {"name": "item_ids", "datatype": "INT64", "shape": [5],
                               "data": [i["item_id"] for i in want["items"]]}
    assert out["scores"]["datatype"] == "FP64"
    assert out["scores"]["data"] == pytest.approx([i["score"] for i in want["items"]])
    assert out["unknown_items"]["data"] == [424242] and out["fallback"]["data"] == [""]


def test_v2_string_ids_nested_bytes_and_options(loaded):
    ids = some_ids(loaded)
    body = {"history": [str(x) for x in ids], "k": 3, "exclude": [ids[3]], "exclude_seen": False}
    status, answer = v2(loaded, tensor("history", [[str(x) for x in ids]], "BYTES", [1, len(ids)]),
                        tensor("k", [3], "INT64"), tensor("exclude", [ids[3]]),
                        tensor("exclude_seen", [False], "BOOL"))
    assert status == 200
    assert outputs(answer)["item_ids"]["data"] == [i["item_id"] for i in plain(loaded, body)["items"]]


def test_v2_str_index_answers_bytes_ids(loaded_str):
    ids = some_ids(loaded_str, 3)
    status, answer = v2(loaded_str, tensor("history", [ids], "BYTES", [1, 3]))
    assert status == 200 and outputs(answer)["item_ids"]["datatype"] == "BYTES"
    assert outputs(answer)["item_ids"]["data"] == [i["item_id"] for i in plain(loaded_str, {"history": ids})["items"]]


def test_v2_empty_history_is_the_popular_fallback(loaded):
    status, answer = v2(loaded, tensor("history", [], shape=[0]), tensor("k", [4], "INT32"))
    out = outputs(answer)
    assert status == 200 and out["fallback"]["data"] == ["popular"] and out["item_ids"]["shape"] == [4]
    assert out["unknown_items"] == {"name": "unknown_items", "datatype": "INT64", "shape": [0], "data": []}


@pytest.mark.parametrize("inputs, fragment", [
    ([tensor("history", [1000]), tensor("k", [0], "INT32")], "k must be an integer in 1..1000, got 0"),
    ([tensor("items", [1000])], "unknown input 'items'"),
    ([tensor("history", ["1000", "1003"], "BYTES")], "send it nested"),
])
def test_v2_bad_input_is_a_400_with_an_error_output(loaded, inputs, fragment):
    status, answer = v2(loaded, *inputs)
    assert status == 400
    (err,) = answer["outputs"]
    assert err["name"] == "error" and err["datatype"] == "BYTES" and fragment in err["data"][0]


# ---- the handler behind TorchServe's kserve (v1) envelope
@pytest.fixture
def v1_env(monkeypatch):
    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "kserve")


def test_v1_instances_answer_as_plain_requests(loaded, v1_env):
    ids = some_ids(loaded)
    instances = [{"history": ids[:2], "k": 3}, {"history": [], "k": 2}, {"history": ids, "k": 0}]
    status, answer = through_envelope(KServeEnvelope, loaded, {"instances": instances})
    first, second, bad = answer["predictions"]
    assert status == 400  # one instance was bad: the HTTP answer carries the worst status
    assert first == plain(loaded, instances[0]) and second == plain(loaded, instances[1])
    assert bad["code"] == 400 and "k must be an integer" in bad["message"]


@pytest.mark.parametrize("body", [{"history": [1000]}, {"instances": []}])
def test_v1_without_instances_is_a_400(loaded, v1_env, body):
    status, answer = through_envelope(KServeEnvelope, loaded, body)
    assert status == 400 and 'a KServe v1 request is {"instances"' in answer["predictions"][0]["message"]


def test_plain_rows_stay_plain_when_the_v1_variable_is_set_but_unused(loaded, v1_env):
    """TS_SERVICE_ENVELOPE=kserve without enable_envvars_config: TorchServe uses no envelope."""
    ids = some_ids(loaded)
    h, ctx = loaded
    [out] = run_batch(h, ctx, [{"history": ids, "k": 2}])
    assert isinstance(out, str) and len(json.loads(out)["items"]) == 2


def test_respond_maps_numpy_types_the_envelope_understands():
    class Ctx:
        def set_response_status(self, *a):
            self.status = a

        def set_response_content_type(self, *a):
            pass

    class Answer:  # duck-typed like seqrec_request.Answer
        ids, scores, unknown, fallback = ["a", "b"], [0.5, 0.25], (), None

    ctx = Ctx()
    arrays = kserve.respond(kserve.V2, ctx, [Answer()], "seqrec", "1.0", "str")
    assert ctx.input_names == list(kserve.OUTPUTS)
    assert [a.dtype for a in arrays] == [np.dtype(object), np.dtype(np.float64), np.dtype(object), np.dtype(object)]
