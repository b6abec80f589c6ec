"""TorchServe handler for seqrec: N JSON requests in, N JSON answers out (docs/http-api.md).

    ./archive.sh artifacts/<export>            # packs this file, its helpers and the export
    export TS_CONFIG_FILE=$PWD/config.properties && torchserve --start --models seqrec.mar

A bad request gets 400 with {"code", "type", "message"} at its own index of the batch; the other
requests of the batch are answered normally. Nothing a client sends can raise out of handle():
an unexpected failure answers 500 for the requests it touched, never the whole batch.

A batch goes through named stages: parse (seqrec_contract: body -> Request or a 400) -> resolve
(seqrec_request: one index lookup for the batch -> one Resolved record per request) -> score (one
padded forward, one top-k over the catalogue) -> respond (each Outcome, Answer or Failure, as JSON).
Under TorchServe's KServe envelopes (TS_SERVICE_ENVELOPE=kservev2|kserve) seqrec_kserve maps the
envelope's input onto the same parse stage and the outcomes onto its answer shape.

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
from typing import Any, Dict, List, Optional, Union

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

if __package__:  # imported as handler.seqrec_handler (tests, benchmarks, devtools)
    from .seqrec_artifact import MODEL_FILE, verify_export
    from .seqrec_catalogue import Catalogue
    from .seqrec_contract import BadRequest, Request, parse_request
    from .seqrec_index import CandidateIndex
    from . import seqrec_kserve as kserve
    from .seqrec_request import Answer, Failure, Outcome, Resolved, partition, resolve
    from .seqrec_twostage import ScoringOptions, rank_catalogue
else:  # TorchServe: the archive's files land flat in model_dir, the worker's import path
    from seqrec_artifact import MODEL_FILE, verify_export
    from seqrec_catalogue import Catalogue
    from seqrec_contract import BadRequest, Request, parse_request
    from seqrec_index import CandidateIndex
    import seqrec_kserve as kserve
    from seqrec_request import Answer, Failure, Outcome, Resolved, partition, resolve
    from seqrec_twostage import ScoringOptions, rank_catalogue

log = logging.getLogger(__name__)

# Metric name -> (type, unit, dimension names). No metrics YAML declares them: _metric adds each
# to the worker's cache on first use, and config.properties' model_metrics_auto_detect=true lets the
# frontend publish them on /metrics with the type each metric line carries.
METRICS = {
    "SeqrecRequests": (MetricTypes.COUNTER, "Count", ["Outcome", "ModelName", "Level"]),
    "SeqrecScoringSeconds": (MetricTypes.HISTOGRAM, "Seconds", ["ModelName", "Level"]),
    "SeqrecBatchSize": (MetricTypes.HISTOGRAM, "Count", ["ModelName", "Level"]),
}
OK, BAD_REQUEST, EMPTY_HISTORY, ERROR = "ok", "bad_request", "empty_history", "error"


class SeqrecHandler(BaseHandler):
    def initialize(self, context):
        props = context.system_properties
        model_dir = props["model_dir"]
        # An export of another format version (e.g. an older encode_events), corrupt or incomplete
        # fails here with what to do, never at the first request.
        self.meta = verify_export(model_dir)
        self.device = self._pick_device(props.get("gpu_id"), context)
        self.model = torch.jit.load(os.path.join(model_dir, MODEL_FILE), map_location=self.device).eval()
        self.catalogue = Catalogue.load(model_dir, self.meta, self.device)
        self.index = self._load_index(model_dir, getattr(context, "model_yaml_config", None))
        self.model_name = self.meta.get("model_name", "seqrec")
        self.model_version = str(self.meta.get("model_version", ""))
        self.context = context
        self._warm_up()
        self.initialized = True
        warning = kserve.batch_warning(props.get("batch_size"))
        if warning:
            log.warning(warning)
        log.info("seqrec %s ready on %s: %d items (%d scorable), total_length %d, %d threads, scoring %s",
                 self.model_version, self.device, self.catalogue.num_items, len(self.catalogue.rows),
                 int(self.model.total_length), torch.get_num_threads(),
                 "exact" if self.index is None else f"{self.index.kind} {self.index.knobs} + exact re-rank")

    def _load_index(self, model_dir, yaml_config) -> Optional[CandidateIndex]:
        """The export's candidate index unless the model YAML asks for exact scoring."""
        opts = ScoringOptions.from_yaml(yaml_config)
        if opts.scoring == "exact":
            return None
        index = CandidateIndex.load(model_dir, self.meta, opts.ef_search, opts.nprobe, torch.get_num_threads(),
                                    opts.shortlist)
        if index is None and opts.scoring == "index":
            raise RuntimeError("seqrec: the model YAML asks for seqrec.scoring=index but this export has no "
                               "index; re-export with --set index=pq (or drop the setting)")
        return index

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

    def _warm_up(self):
        first = self.catalogue.decode(self.catalogue.rows[:1].cpu().numpy()) if len(self.catalogue.rows) else [0]
        bodies = [{"history": first * 3, "k": 10}, {"history": [], "k": 10},
                  {"history": first, "candidates": first, "k": 1}]
        requests = {i: parse_request(b) for i, b in enumerate(bodies)}
        for _ in range(3):  # TorchScript's profiling executor optimises on the 2nd/3rd call
            for i, outcome in self._answer(requests).items():
                if isinstance(outcome, Failure):
                    raise RuntimeError(f"seqrec: warm-up request {i} failed: {outcome.message}")

    # ---- TorchServe entry point: parse -> resolve -> score -> respond
    def handle(self, data: List[Any], context) -> list:
        self.context = context
        if self._header(context, "describe") == "True":
            return [json.dumps(self.describe())] * len(data)
        explain = self._header(context, "explain") == "True"
        envelope = kserve.envelope(data, context)  # None: TorchServe's own rows, one per request
        units, body = (data, _body) if envelope is None else (
            kserve.units(envelope, data), lambda unit: kserve.body(envelope, unit))
        requests, outcomes = partition({i: self._parse(i, body, u, explain) for i, u in enumerate(units)})
        t0 = time.perf_counter()
        outcomes.update(self._answer(requests))
        scoring_s = time.perf_counter() - t0
        ordered = [outcomes[i] for i in range(len(units))]  # every index has exactly one outcome
        self._emit_metrics([_label(o) for o in ordered], scoring_s if requests else None, len(units))
        if envelope is not None:
            return kserve.respond(envelope, context, ordered, self.model_name, self.model_version,
                                  self.catalogue.id_type)
        return [self._respond(context, i, o) for i, o in enumerate(ordered)]

    def describe(self) -> dict:
        keys = ("model_name", "model_version", "created_at", "item_id_type", "num_items",
                "total_length", "metrics", "torch_version")
        return {k: self.meta.get(k) for k in keys}

    @staticmethod
    def _parse(i: int, body, row: Any, explain: bool) -> Union[Request, Failure]:
        try:
            if explain:
                raise BadRequest("explanations are not supported; POST /predictions/<model>")
            return parse_request(body(row))
        except BadRequest as e:
            return Failure.bad_request(str(e))
        except Exception as e:  # noqa: BLE001 -- a parser bug must not cost the other requests their answer
            log.exception("seqrec: parsing request %d failed", i)
            return Failure.internal(e)

    @torch.inference_mode()
    def _answer(self, requests: Dict[int, Request]) -> Dict[int, Outcome]:
        """resolve -> score for the requests that parsed: one outcome each."""
        resolved, outcomes = partition(resolve(requests, self.catalogue))
        outcomes.update(self._score(resolved))
        return outcomes

    def _respond(self, context, i: int, outcome: Outcome) -> str:
        if isinstance(outcome, Failure):
            return self._error(context, i, outcome)
        _set_json(context, i)
        return json.dumps(outcome.body(self.model_name, self.model_version), separators=(",", ":"))

    # ---- score: tastes in one padded forward, the catalogue in one top-k, the rest per request
    def _score(self, work: Dict[int, Resolved]) -> Dict[int, Outcome]:
        tastes, outcomes = partition(self._tastes({i: w for i, w in work.items() if w.history.items}))
        whole = {i: w for i, w in work.items() if i in tastes and w.candidates is None}
        outcomes.update(self._rank_catalogue(whole, tastes))
        for i, w in work.items():
            if i not in outcomes:
                outcomes[i] = self._rank_one(w, tastes.get(i))
        return outcomes

    def _tastes(self, work: Dict[int, Resolved]) -> Dict[int, Union[torch.Tensor, Failure]]:
        """One padded batch through the scripted model; if it fails, retry one by one so a
        single bad history cannot take the others down."""
        out: Dict[int, Union[torch.Tensor, Failure]] = {}
        feats = {}
        for i, w in work.items():
            h = w.history
            try:
                feats[i] = self.model.encode_events(h.timestamps, h.event_types, h.sources, h.strengths, w.now)
            except Exception as e:  # noqa: BLE001
                log.exception("seqrec: encoding request %d failed", i)
                out[i] = Failure.internal(e)
        if not feats:
            return out
        order = list(feats)
        seqs = [work[i].history.items for i in order]
        try:
            out.update(zip(order, self._forward(seqs, [feats[i] for i in order])))
            return out
        except Exception:  # noqa: BLE001
            log.exception("seqrec: batched forward failed; retrying one by one")
        for i, seq in zip(order, seqs):
            try:
                out[i] = self._forward([seq], [feats[i]])[0]
            except Exception as e:  # noqa: BLE001
                log.exception("seqrec: forward of request %d failed", i)
                out[i] = Failure.internal(e)
        return out

    def _forward(self, seqs, feats) -> torch.Tensor:
        items, features, lengths = self.model.pad(seqs, feats)  # training's own padding/truncation
        return self.model(items.to(self.device), features.to(self.device), lengths.to(self.device))

    def _rank_catalogue(self, work: Dict[int, Resolved], tastes: Dict[int, torch.Tensor]) -> Dict[int, Outcome]:
        """The whole catalogue for every request without candidates: the index's shortlists
        re-ranked exactly, or one chunked exact top-k (seqrec_twostage)."""
        if not work:
            return {}
        try:
            ranked = rank_catalogue(torch.stack([tastes[i] for i in work]),
                                    [(w.k, w.banned) for w in work.values()], self.catalogue, self.index)
            return {i: self._ranked(w, *r) for (i, w), r in zip(work.items(), ranked)}
        except Exception as e:  # noqa: BLE001 -- reported per request as 500
            log.exception("seqrec: scoring failed")
            return {i: Failure.internal(e) for i in work}

    def _rank_one(self, w: Resolved, taste: Optional[torch.Tensor]) -> Outcome:
        """Candidates ranked by the taste, or (no known history) the popular fallback."""
        try:
            if taste is None:
                return self._popular(w)
            cos = self.catalogue.row_vectors(w.candidates) @ taste
            top = torch.topk(cos, min(w.k, cos.numel()))
            return self._ranked(w, top.values, w.candidates[top.indices])
        except Exception as e:  # noqa: BLE001
            log.exception("seqrec: request failed")
            return Failure.internal(e)

    def _ranked(self, w: Resolved, cos: torch.Tensor, pos: torch.Tensor) -> Answer:
        cos, pos = cos[: w.k], pos[: w.k]
        ok = torch.isfinite(cos)  # -inf: banned, or padding when fewer than k rows were allowed
        # The score is the cosine itself (docs/http-api.md): the model's tanh(cos*|w|+b) saturates at 1.
        scores = cos[ok].float().cpu().tolist()
        ids = self.catalogue.decode(self.catalogue.rows[pos[ok]].cpu().numpy())
        return Answer(ids, scores, w.unknown, fallback=None)

    def _popular(self, w: Resolved) -> Answer:
        cat = self.catalogue
        banned = cat.rows[w.banned].cpu().numpy()
        allowed = None if w.candidates is None else cat.rows[w.candidates].cpu().numpy()
        idx = cat.popular(w.k, banned, allowed)
        return Answer(cat.decode(idx), cat.popularity_share[idx - 1].tolist(), w.unknown, fallback="popular")

    # ---- plumbing
    @staticmethod
    def _error(context, idx: int, failure: Failure) -> str:
        # The status line gets the standard phrase only: message text comes from the client and
        # Netty refuses CR/LF in a reason phrase. The details travel in the JSON body.
        phrase = "Bad Request" if failure.code == 400 else "Internal Server Error"
        context.set_response_status(failure.code, phrase, idx=idx)
        _set_json(context, idx)
        return json.dumps(failure.body())

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
        except Exception:  # not in the worker's metrics YAML (TorchServe's default): declare it
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


def _label(outcome: Outcome) -> str:
    """The Outcome dimension of SeqrecRequests."""
    if isinstance(outcome, Failure):
        return BAD_REQUEST if outcome.code == 400 else ERROR
    return EMPTY_HISTORY if outcome.fallback else OK


def _set_json(context, idx: int):
    try:
        context.set_response_content_type(idx, "application/json")
    except (TypeError, IndexError, AttributeError):
        pass  # contexts without per-request processors (some test doubles)

