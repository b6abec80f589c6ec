"""KServe's request shapes for the seqrec handler: what TorchServe's `kservev2` (Open Inference
Protocol) and `kserve` (v1) envelopes hand handle(), mapped onto the one request contract
(seqrec_contract.parse_request), and the answers mapped back (docs/http-api.md, "KServe").

    TS_SERVICE_ENVELOPE=kservev2 (+ enable_envvars_config=true), POST /v2/models/seqrec/infer:
      {"inputs": [{"name": "history", "datatype": "INT64", "shape": [3], "data": [1000, 1003, 1006]},
                  {"name": "k", "datatype": "INT32", "shape": [1], "data": [5]}]}
    -> {"id": ..., "model_name": "seqrec", "model_version": "1.0", "outputs": [
          {"name": "item_ids", "datatype": "INT64", "shape": [5], "data": [...]},
          {"name": "scores", "datatype": "FP64", ...}, {"name": "unknown_items", ...},
          {"name": "fallback", "datatype": "BYTES", "shape": [1], "data": [""]}]}

What the envelopes of TorchServe 0.12 hand handle() (ts/torch_handler/request_envelope/):
- kservev2: the input tensors of the batch's FIRST request only, each {"name", "shape",
  "datatype", "data"}: numeric data reshaped to `shape` (nested lists), a BYTES tensor's data
  replaced by its first element (so string ids must be sent nested, shape [1, n]). It sets
  context.input_names and names output i after input_names[i]: respond() renames them.
- kserve: the "instances" list of the batch's first request (None when there is none); each
  instance is one plain seqrec request; the answers become {"predictions": [...]}.
Either envelope builds one HTTP answer for the whole batch, which TorchServe then refuses for a
batch of two or more (503 for all): serve them with batchSize 1 (ops/kserve_layout.py).

Torch-free, like seqrec_contract: tests/handler/test_kserve_adapter.py runs it without a model.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

import numpy as np

if __package__:  # imported as handler.seqrec_kserve (tests)
    from .seqrec_contract import BadRequest
else:  # TorchServe: the archive's files land flat in model_dir
    from seqrec_contract import BadRequest

V2, V1 = "kservev2", "kserve"

_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_NUMBERS = _INTS | {"FP16", "FP32", "FP64"}
_IDS = _INTS | {"BYTES"}
# The v2 inputs and the datatypes each accepts: one value (SCALARS), a list (LISTS), or one value
# per history item (EVENTS, with the event field it fills).
SCALARS = {"k": _INTS, "exclude_seen": {"BOOL"}, "now": _NUMBERS, "user_id": _IDS}
LISTS = {"history": _IDS, "exclude": _IDS, "candidates": _IDS}
EVENTS = {"timestamps": ("timestamp", _NUMBERS), "event_types": ("event_type", {"BYTES"}),
          "sources": ("source", {"BYTES"}), "strengths": ("strength", _NUMBERS)}
INPUTS = sorted([*SCALARS, *LISTS, *EVENTS])
OUTPUTS = ("item_ids", "scores", "unknown_items", "fallback")


def envelope(data: Any, context: Any) -> Optional[str]:
    """The KServe envelope that parsed `data`, or None for TorchServe's own rows ({"body": ...}).
    kservev2 leaves context.input_names. The v1 envelope leaves nothing: it is known by the
    variable KServe selects it with, unless the rows are TorchServe's own after all (the variable
    set, but TorchServe started without enable_envvars_config, reads no TS_* variable), or by
    what only it hands over (None or [] for a request without instances)."""
    if isinstance(getattr(context, "input_names", None), list):
        return V2
    if data is None or data == [] or (os.environ.get("TS_SERVICE_ENVELOPE") == V1 and not _torchserve_rows(data)):
        return V1
    return None


def units(kind: str, data: Any) -> list:
    """The requests in what the envelope handed over: kservev2, one (its tensors); v1, one per
    instance (a missing or empty "instances" is one bad request)."""
    if kind == V2:
        return [data]
    return data if isinstance(data, list) and data else [_NoInstances(data)]


def body(kind: str, unit: Any) -> Any:
    """One unit as a seqrec request body, for seqrec_contract.parse_request; BadRequest if the
    KServe shape itself is wrong."""
    if kind == V2:
        return v2_body(unit)
    if isinstance(unit, _NoInstances):
        got = "none" if unit.data is None else f"{type(unit.data).__name__} {unit.data!r:.40}"
        raise BadRequest('a KServe v1 request is {"instances": [<seqrec request>, ...]} with at least '
                         f"one instance; got instances: {got}")
    return unit


def v2_body(inputs: Any) -> dict:
    """The input tensors of one v2 request -> the seqrec request body they spell."""
    if not isinstance(inputs, list):
        raise BadRequest(f"a v2 request needs a list of input tensors, got {type(inputs).__name__}")
    tensors: Dict[str, Any] = {}
    for i, t in enumerate(inputs):
        name = t.get("name") if isinstance(t, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{i}] must be a tensor with a string 'name'")
        if name not in INPUTS:
            raise BadRequest(f"unknown input {name!r}; inputs: {INPUTS}")
        if name in tensors:
            raise BadRequest(f"input {name!r} given twice")
        tensors[name] = t
    if "history" not in tensors:
        raise BadRequest("input 'history' is required: the item ids, oldest first (INT64, or BYTES for "
                         "string ids), shape [n] or [1, n]")
    history = _values(tensors["history"], LISTS["history"])
    out: Dict[str, Any] = {"history": history}
    events = {field: _values(tensors[n], types) for n, (field, types) in EVENTS.items() if n in tensors}
    for n, (field, _) in EVENTS.items():
        if field in events and len(events[field]) != len(history):
            raise BadRequest(f"{n} has {len(events[field])} elements, history {len(history)}: one per event")
    if events:
        out["history"] = [{"item_id": h, **{f: v[j] for f, v in events.items()}} for j, h in enumerate(history)]
    for n in ("exclude", "candidates"):
        if n in tensors:
            out[n] = _values(tensors[n], LISTS[n])
    for n, types in SCALARS.items():
        if n in tensors:
            values = _values(tensors[n], types)
            if len(values) != 1:
                raise BadRequest(f"{n} must hold one value (shape [1]), got {len(values)}")
            out[n] = values[0]
    return out


def respond(kind: str, context: Any, outcomes: list, model: str, version: str, id_type: str) -> list:
    """The envelope's input for its answer: v2, the output tensors of the one request (and
    context.input_names, which the envelope names them by); v1, one JSON object per instance.
    A failure's status goes to the HTTP answer (the worst one, for v1)."""
    failures = [o for o in outcomes if _failed(o)]
    if failures:
        worst = max(failures, key=lambda f: f.code)
        context.set_response_status(worst.code, "Bad Request" if worst.code == 400 else "Internal Server Error", 0)
    try:
        context.set_response_content_type(0, "application/json")
    except (TypeError, IndexError, AttributeError):
        pass
    if kind == V1:
        return [o.body() if _failed(o) else o.body(model, version) for o in outcomes]
    (o,) = outcomes
    if _failed(o):
        context.input_names = ["error"]
        return [np.array([o.message], dtype=object)]
    context.input_names = list(OUTPUTS)
    return [_ids(o.ids, id_type), np.array(o.scores, dtype=np.float64), _ids(o.unknown, id_type),
            np.array([o.fallback or ""], dtype=object)]


def batch_warning(batch_size: Any) -> Optional[str]:
    """What to log at load when a KServe envelope meets batching (every batch of 2+ fails)."""
    kind = os.environ.get("TS_SERVICE_ENVELOPE")
    if kind in (V1, V2) and isinstance(batch_size, int) and batch_size > 1:
        return (f"seqrec: TorchServe's {kind} envelope answers only the first request of a batch, so "
                f"with batchSize {batch_size} concurrent requests get 503 (number of batch response "
                "mismatched); give this model batchSize 1 (ops/kserve_layout.py writes it)")
    return None


# ---- helpers
class _NoInstances:
    def __init__(self, data: Any) -> None:
        self.data = data


def _failed(outcome: Any) -> bool:
    """A seqrec_request.Failure (duck-typed: that module needs torch, this one does not)."""
    return hasattr(outcome, "code")


def _torchserve_rows(data: Any) -> bool:
    return isinstance(data, list) and any(isinstance(r, dict) and ("body" in r or "data" in r) for r in data)


def _values(t: dict, datatypes: set) -> list:
    """A tensor's elements, flat, each checked against its datatype. One request is one user:
    shape [n] or [1, n] (every leading dimension 1)."""
    name, dt, shape, data = t.get("name"), t.get("datatype"), t.get("shape"), t.get("data")
    if dt not in datatypes:
        raise BadRequest(f"{name}: datatype must be one of {sorted(datatypes)}, got {dt!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"{name}: shape must be a list of sizes, got {shape!r}")
    if any(d != 1 for d in shape[:-1]):
        raise BadRequest(f"{name}: shape {shape}: one v2 request is one user's request, so [n] or [1, n]")
    n = math.prod(shape)
    if dt == "BYTES" and not isinstance(data, list):
        # The envelope replaced a BYTES tensor's data by its first element: a flat list of n > 1
        # strings has lost all but one, a nested [[...]] kept its one row (a list, below).
        if n != 1:
            raise BadRequest(f"{name}: a BYTES tensor of shape {shape} arrives through TorchServe's kservev2 "
                             f"envelope as its first element only; send it nested: shape [1, {n}], "
                             "data [[...]]")
        data = [data]
    values = _flatten(data)
    if len(values) != n:
        raise BadRequest(f"{name}: shape {shape} holds {n} elements, got {len(values)}")
    for j, v in enumerate(values):
        if not _is(v, dt):
            raise BadRequest(f"{name}[{j}]: datatype {dt}, got {v!r:.40}")
    return values


def _flatten(x: Any) -> list:
    if not isinstance(x, list):
        return [x]
    return [v for e in x for v in _flatten(e)]


def _is(v: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(v, str)
    if datatype == "BOOL":
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if datatype in _INTS else isinstance(v, (int, float))


def _ids(ids, id_type: str) -> np.ndarray:
    """Item ids as one tensor: INT64 for integer ids, BYTES for strings (the envelope maps the
    numpy dtype to the v2 datatype)."""
    ints = all(isinstance(x, int) for x in ids) if len(ids) else id_type == "int"
    return np.array(list(ids), dtype=np.int64 if ints else object)
