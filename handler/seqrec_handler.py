"""TorchServe handler for seqrec: N JSON requests in, N JSON answers out (docs/http-api.md).

    ./archive.sh artifacts/<export>            # packs this file, its helpers and the export
    torchserve --start --ncs --ts-config config.properties --models seqrec=seqrec.mar

A bad request gets 400 with {"code", "type", "message"} at its own index of the batch; the other
requests of the batch are answered normally. Nothing a client sends can raise out of handle():
an unexpected failure answers 500 for the requests it touched, never the whole batch.

CPU threads: TorchServe starts `minWorkers` processes and sets no thread count, so each worker
takes max(1, cores // workers) threads (workers from SEQREC_WORKERS, else the model YAML's
minWorkers, else 1); SEQREC_THREADS overrides. Oversubscribing cores makes OpenMP spin and
latency explode on a busy box (measured: bench/results/serve.json).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

if __package__:  # imported as handler.seqrec_handler (tests, benchmarks, devtools)
    from .seqrec_catalogue import MODEL_FILE, Catalogue, verify_export
    from .seqrec_contract import BadRequest, Request, normalise_ids, parse_request
    from .seqrec_scoring import chunked_topk
else:  # TorchServe: the archive's files land flat in model_dir, the worker's import path
    from seqrec_catalogue import MODEL_FILE, Catalogue, verify_export
    from seqrec_contract import BadRequest, Request, normalise_ids, parse_request
    from seqrec_scoring import chunked_topk

log = logging.getLogger(__name__)

# Metric name -> (type, unit, dimension names); declared the same way in handler/metrics.yaml,
# which the frontend needs in order to publish them on /metrics (metrics_mode=prometheus).
METRICS = {
    "SeqrecRequests": (MetricTypes.COUNTER, "Count", ["Outcome", "ModelName", "Level"]),
    "SeqrecScoringSeconds": (MetricTypes.HISTOGRAM, "Seconds", ["ModelName", "Level"]),
    "SeqrecBatchSize": (MetricTypes.HISTOGRAM, "Count", ["ModelName", "Level"]),
}
OK, BAD_REQUEST, EMPTY_HISTORY, ERROR = "ok", "bad_request", "empty_history", "error"
ENCODE_EVENTS_ARGS = ["timestamps", "event_types", "sources", "strengths", "now"]


class SeqrecHandler(BaseHandler):
    def initialize(self, context):
        props = context.system_properties
        model_dir = props["model_dir"]
        self.meta = verify_export(model_dir)
        self.device = self._pick_device(props.get("gpu_id"), context)
        self.model = torch.jit.load(os.path.join(model_dir, MODEL_FILE), map_location=self.device).eval()
        self.catalogue = Catalogue.load(model_dir, self.meta, self.device)
        self.model_name = self.meta.get("model_name", "seqrec")
        self.model_version = str(self.meta.get("model_version", ""))
        self.context = context
        self._check_encoding_signature()
        self._warm_up()
        self.initialized = True
        log.info("seqrec %s ready on %s: %d items (%d scorable), total_length %d, %d threads",
                 self.model_version, self.device, self.catalogue.num_items, len(self.catalogue.rows),
                 int(self.model.total_length), torch.get_num_threads())

    @staticmethod
    def _pick_device(gpu_id, context) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        threads = os.environ.get("SEQREC_THREADS")
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        else:
            yaml_cfg = getattr(context, "model_yaml_config", None) or {}
            workers = int(os.environ.get("SEQREC_WORKERS") or yaml_cfg.get("minWorkers") or 1)
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            torch.set_num_threads(max(1, (cores or 1) // max(1, workers)))
        return torch.device("cpu")

    def _check_encoding_signature(self):
        """Fail at load, with a reason, on an export whose event encoding predates this handler's
        (e.g. one without the strength column) rather than 500 on every request."""
        args = [a.name for a in self.model.encode_events.schema.arguments][1:]
        if args != ENCODE_EVENTS_ARGS:
            raise RuntimeError(f"seqrec: this export's encode_events takes {args}, this handler passes "
                               f"{ENCODE_EVENTS_ARGS}: re-export the model with the matching train/")

    def _warm_up(self):
        first = self.catalogue.decode(self.catalogue.rows[:1].cpu().numpy()) if len(self.catalogue.rows) else [0]
        reqs = {0: parse_request({"history": first * 3, "k": 10}),
                1: parse_request({"history": [], "k": 10}),
                2: parse_request({"history": first, "candidates": first, "k": 1})}
        for _ in range(3):  # TorchScript's profiling executor optimises on the 2nd/3rd call
            for i, r in self._answer(reqs).items():
                if isinstance(r, Exception):
                    raise RuntimeError(f"seqrec: warm-up request {i} failed: {r}") from r

    # ---- TorchServe entry point
    def handle(self, data: List[Any], context) -> List[str]:
        self.context = context
        n = len(data)
        out: List[Optional[str]] = [None] * n
        outcomes = [OK] * n
        if self._header(context, "describe") == "True":
            return [json.dumps(self.describe())] * n
        explain = self._header(context, "explain") == "True"
        requests: Dict[int, Request] = {}
        for i, row in enumerate(data):
            try:
                if explain:
                    raise BadRequest("explanations are not supported; POST /predictions/<model>")
                requests[i] = parse_request(_body(row))
            except BadRequest as e:
                out[i], outcomes[i] = self._error(context, i, 400, "BadRequest", str(e)), BAD_REQUEST
            except Exception as e:  # a parser bug must not cost the other requests their answer
                log.exception("seqrec: parsing request %d failed", i)
                out[i], outcomes[i] = self._error(context, i, 500, "InternalServerError", repr(e)), ERROR
        t0 = time.perf_counter()
        answers = self._answer(requests)
        scoring_s = time.perf_counter() - t0
        for i, a in answers.items():
            if isinstance(a, Exception):
                out[i], outcomes[i] = self._error(context, i, 500, "InternalServerError", repr(a)), ERROR
            else:
                out[i] = json.dumps(a, separators=(",", ":"))
                outcomes[i] = EMPTY_HISTORY if a["fallback"] else OK
                _set_json(context, i)
        self._emit_metrics(outcomes, scoring_s if requests else None, n)
        return out

    def describe(self) -> dict:
        keys = ("model_name", "model_version", "created_at", "item_id_type", "num_items",
                "total_length", "metrics", "torch_version")
        return {k: self.meta.get(k) for k in keys}

    # ---- the work: lookup, taste, scoring; per-request failures come back as exceptions
    @torch.inference_mode()
    def _answer(self, reqs: Dict[int, Request]) -> Dict[int, Any]:
        cat = self.catalogue
        look = self._lookup(reqs)
        answers: Dict[int, Any] = {}
        with_history = [i for i in reqs if len(look[i]["history"])]
        tastes = self._tastes({i: (reqs[i], look[i]) for i in with_history}, answers)
        full = [i for i in with_history if i in tastes and reqs[i].candidates is None]
        if full:
            kmax = max(reqs[i].k for i in full)
            banned = [self._banned(reqs[i], look[i]) for i in full]
            try:
                cos, pos = chunked_topk(torch.stack([tastes[i] for i in full]), cat.matrix, kmax, banned)
                for row, i in enumerate(full):
                    answers[i] = self._ranked(reqs[i], look[i], cos[row], pos[row])
            except Exception as e:  # noqa: BLE001 -- reported per request as 500
                log.exception("seqrec: scoring failed")
                answers.update({i: e for i in full})
        for i in reqs:
            if i in answers:
                continue
            try:
                if i in tastes:  # candidates: rank only these
                    pos = cat.positions(torch.from_numpy(look[i]["candidates"]))
                    pos = pos[pos >= 0].unique()
                    ban = self._banned(reqs[i], look[i])
                    pos = pos[~torch.isin(pos, ban)] if ban.numel() else pos
                    cos = cat.matrix[pos] @ tastes[i]
                    top = torch.topk(cos, min(reqs[i].k, cos.numel()))
                    answers[i] = self._ranked(reqs[i], look[i], top.values, pos[top.indices])
                else:  # empty or all-unknown history: popular available items
                    answers[i] = self._popular(reqs[i], look[i])
            except Exception as e:  # noqa: BLE001
                log.exception("seqrec: request failed")
                answers[i] = e
        return answers

    def _lookup(self, reqs: Dict[int, Request]) -> Dict[int, dict]:
        """One index lookup for every id of the batch; split back per request."""
        cat, lists = self.catalogue, []
        for i, r in reqs.items():
            lists.append((i, "history", r.history))
            lists.append((i, "exclude", list(r.exclude)))
            lists.append((i, "candidates", r.candidates or []))
        flat = normalise_ids([x for _, _, ids in lists for x in ids], cat.id_type)
        idx = cat.lookup(flat)
        out: Dict[int, dict] = {i: {} for i in reqs}
        start = 0
        for i, name, ids in lists:
            out[i][name] = idx[start:start + len(ids)]
            start += len(ids)
        for i, r in reqs.items():
            h = out[i]["history"]
            known = h > 0
            seen, unknown = set(), []
            for raw, ok in zip(r.history, known.tolist()):
                if not ok and (type(raw), raw) not in seen:  # 12 and "12" are reported apart
                    seen.add((type(raw), raw))
                    unknown.append(raw)
            out[i]["unknown"] = unknown
            out[i]["known"] = known
            out[i]["history"] = h[known]
        return out

    def _tastes(self, work: Dict[int, tuple], answers: Dict[int, Any]) -> Dict[int, torch.Tensor]:
        """One padded batch through the scripted model; if it fails, retry one by one so a
        single bad history cannot take the others down."""
        if not work:
            return {}
        seqs, feats = {}, {}
        for i, (r, lk) in work.items():
            try:
                keep = lk["known"].tolist()
                pick = lambda xs: [x for x, k in zip(xs, keep) if k]
                now = r.now if r.now is not None else time.time()
                feats[i] = self.model.encode_events(pick(r.timestamps), pick(r.event_types), pick(r.sources),
                                                    pick(r.strengths), now)
                seqs[i] = lk["history"].tolist()
            except Exception as e:  # noqa: BLE001
                log.exception("seqrec: encoding request %d failed", i)
                answers[i] = e
        order = list(seqs)
        try:
            return dict(zip(order, self._forward([seqs[i] for i in order], [feats[i] for i in order])))
        except Exception:  # noqa: BLE001
            log.exception("seqrec: batched forward failed; retrying one by one")
        tastes = {}
        for i in order:
            try:
                tastes[i] = self._forward([seqs[i]], [feats[i]])[0]
            except Exception as e:  # noqa: BLE001
                answers[i] = e
        return tastes

    def _forward(self, seqs, feats) -> torch.Tensor:
        items, features, lengths = self.model.pad(seqs, feats)  # training's own padding/truncation
        return self.model(items.to(self.device), features.to(self.device), lengths.to(self.device))

    def _banned(self, r: Request, lk: dict) -> torch.Tensor:
        """Matrix rows request r must not get: its history (exclude_seen) and its exclude ids."""
        idx = np.concatenate([lk["history"] if r.exclude_seen else lk["history"][:0], lk["exclude"]])
        idx = idx[idx > 0]
        if not len(idx):
            return torch.empty(0, dtype=torch.long, device=self.device)
        pos = self.catalogue.positions(torch.from_numpy(np.unique(idx)))
        return pos[pos >= 0]

    def _ranked(self, r: Request, lk: dict, cos: torch.Tensor, pos: torch.Tensor) -> dict:
        cos, pos = cos[: r.k], pos[: r.k]
        ok = torch.isfinite(cos)
        cos, pos = cos[ok], pos[ok]
        scores = self.model.score(cos).float().cpu().tolist()
        ids = self.catalogue.decode(self.catalogue.rows[pos].cpu().numpy())
        return self._response(ids, scores, lk, fallback=None)

    def _popular(self, r: Request, lk: dict) -> dict:
        banned = np.unique(np.concatenate([lk["history"] if r.exclude_seen else lk["history"][:0], lk["exclude"]]))
        cand = lk["candidates"] if r.candidates is not None else None
        idx = self.catalogue.popular(r.k, banned, cand)
        scores = self.catalogue.popularity_share[idx - 1].tolist()
        return self._response(self.catalogue.decode(idx), scores, lk, fallback="popular")

    def _response(self, ids: list, scores: list, lk: dict, fallback: Optional[str]) -> dict:
        return {"items": [{"item_id": i, "score": s} for i, s in zip(ids, scores)],
                "model": self.model_name, "model_version": self.model_version,
                "unknown_items": lk["unknown"], "fallback": fallback}

    # ---- plumbing
    @staticmethod
    def _error(context, idx: int, code: int, kind: str, message: str) -> str:
        # The status line gets the standard phrase only: message text comes from the client and
        # Netty refuses CR/LF in a reason phrase. The details travel in the JSON body.
        context.set_response_status(code, "Bad Request" if code == 400 else "Internal Server Error", idx=idx)
        _set_json(context, idx)
        return json.dumps({"code": code, "type": kind, "message": message})

    @staticmethod
    def _header(context, name: str) -> Optional[str]:
        try:
            return context.get_request_header(0, name)
        except (TypeError, IndexError, AttributeError):
            return None

    def _emit_metrics(self, outcomes: List[str], scoring_s: Optional[float], batch: int):
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        try:
            for outcome in set(outcomes):
                self._metric(metrics, "SeqrecRequests", outcomes.count(outcome), Outcome=outcome)
            if scoring_s is not None:
                self._metric(metrics, "SeqrecScoringSeconds", scoring_s)
            self._metric(metrics, "SeqrecBatchSize", batch)
        except Exception:  # noqa: BLE001 -- metrics must never cost an answer
            log.exception("seqrec: emitting metrics failed")

    def _metric(self, metrics, name: str, value: float, **dims):
        kind, unit, dim_names = METRICS[name]
        try:
            metric = metrics.get_metric(name, kind)
        except Exception:  # not declared in the worker's metrics YAML: declare it here
            metric = metrics.add_metric_to_cache(name, unit, dim_names, kind)
        values = {"ModelName": self.model_name, "Level": "Model", **dims}
        metric.add_or_update(value, [str(values.get(d, "")) for d in metric.dimension_names])


def _body(row: Any) -> Any:
    """TorchServe puts a JSON body under "body" (sometimes "data"); query parameters sit beside it."""
    if not isinstance(row, dict):
        return row
    for key in ("data", "body"):
        if key in row and row[key] is not None:
            return row[key]
    raise BadRequest("no request body; POST a JSON object with Content-Type: application/json")


def _set_json(context, idx: int):
    try:
        context.set_response_content_type(idx, "application/json")
    except (TypeError, IndexError, AttributeError):
        pass  # contexts without per-request processors (some test doubles)

