"""The seqrec client: recommendations over HTTP, A/B assignment, exposures and fallbacks.

    from seqrec_sdk import Client
    with Client("http://127.0.0.1:8080", token_file="/srv/torchserve/key_file.json") as client:
        recs = client.recommend([101, 205, 317], k=10, user_id="u-42")
        print(recs.item_ids, recs.model_version, recs.recommendation_id)

One client per process, shared by all threads: it holds one connection pool. Several serving
hosts: ``Client(["http://10.0.0.1:8080", "http://10.0.0.2:8080"], ...)`` spreads the calls over
them and fails over between them (see _hosts.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import (
    Any,
    Callable,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import quote

import requests

from ._hosts import Cooldown, Host, HostPool, PerHost, endpoints, token_sources
from ._transport import RetryPolicy, TimeoutArg, Transport
from .errors import (
    ConnectionFailed,
    Overloaded,
    SeqrecError,
    ServerError,
    Timeout,
)
from .experiment_source import ExperimentSource, as_source
from .experiments import Experiment
from .models import (
    ClientStats,
    Exposure,
    HistoryItem,
    ItemId,
    ModelVersion,
    Recommendations,
    RecommendRequest,
    ScoredItem,
    Timestamp,
    Variant,
)

__all__ = ["Client", "Fallback", "ExposureCallback"]

log = logging.getLogger("seqrec_sdk")
exposure_log = logging.getLogger("seqrec_sdk.exposure")

# A list of popular item ids, or a function of the request returning ids or ScoredItems.
Fallback = Union[Sequence[ItemId], Callable[[RecommendRequest], Sequence[Union[ItemId, ScoredItem]]]]
ExposureCallback = Callable[[Exposure], None]

# Failures where a fallback beats an error page: the server is slow, gone or broken.
# Not BadRequest, AuthError or ModelNotFound: those are our bugs and must stay loud.
_FALLBACK_REASONS: Tuple[Tuple[type, str], ...] = (
    (Timeout, "timeout"),
    (ConnectionFailed, "connection_failed"),
    (Overloaded, "overloaded"),
    (ServerError, "server_error"),
)


def _log_exposure(exposure: Exposure) -> None:
    exposure_log.info("exposure %s", json.dumps(exposure.to_dict(), separators=(",", ":")))


class Client:
    """Client of the seqrec HTTP contract (``POST /predictions/<model>[/<version>]``).

    Args:
        base_url: TorchServe's inference address, e.g. ``http://127.0.0.1:8080``, or a sequence
            of them (several serving hosts, same models): calls go round-robin over the healthy
            ones; a host failing with a connection error, 503/504 or "Worker died." is left out
            for ``cooldown`` and the call moves to another host within its ``retries``.
        model: the registered model name.
        token / token_file: the inference key, or TorchServe's ``key_file.json`` (re-read once
            when the server refuses the key, e.g. after rotation). Neither: $SEQREC_TOKEN, then
            $SEQREC_TOKEN_FILE, else no Authorization header. With several hosts, one value for
            all, or a mapping base URL -> value (each TorchServe writes its own key file).
        timeout: seconds, or (connect, read); applies to every call.
        retries: extra attempts on connection errors, 503/504 and TorchServe's "Worker died."
            (500/507: the batch of a killed worker), or a :class:`RetryPolicy`; an attempt that
            moves to another host is one of them.
        cooldown: seconds a failing host stays out of the rotation, doubling up to 30 s while
            its probes fail, or a :class:`Cooldown` (base, max).
        session: a ``requests.Session`` to use (the caller keeps ownership: not closed here).
        pool_size: connections kept to the server; also recommend_many's default threads.
        experiments: :class:`Experiment` s, or a source that refreshes them (e.g.
            :class:`~seqrec_sdk.growthbook_source.GrowthBookSource`, closed by :meth:`close`);
            a user's request goes to the version of the first experiment that assigns them a
            variant (use GrowthBook namespaces to keep overlapping experiments exclusive), else
            to the source's default version (a fixed list: the server's default).
        on_exposure: called once per served recommendation of a user in an experiment; the
            default logs a JSON line on the ``seqrec_sdk.exposure`` logger at INFO.
        fallback: popular item ids, or a function of the :class:`RecommendRequest`, served
            (flagged ``fallback=True``) instead of raising on timeout, connection failure,
            503 or other 5xx after the retries.
        management_url / management_token: TorchServe's management address (port 8081 by
            default) and key, needed by :meth:`versions` only; the key defaults to the
            "management" entry of ``token_file`` (the first host's, with one file per host),
            then $SEQREC_MANAGEMENT_TOKEN.
    """

    def __init__(
        self,
        base_url: Union[str, Sequence[str]],
        model: str = "seqrec",
        *,
        token: PerHost = None,
        token_file: PerHost = None,
        timeout: TimeoutArg = (1.0, 2.0),
        retries: Union[int, RetryPolicy] = 2,
        cooldown: Union[float, Cooldown] = Cooldown(),
        session: Optional[requests.Session] = None,
        pool_size: int = 16,
        experiments: Union[Iterable[Experiment], ExperimentSource] = (),
        on_exposure: Optional[ExposureCallback] = None,
        fallback: Optional[Fallback] = None,
        management_url: Optional[str] = None,
        management_token: Optional[str] = None,
    ) -> None:
        urls = endpoints(base_url)
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.base_urls = urls
        self.base_url = urls[0]  # the one-host form's attribute: the first host
        self.model = model
        self.management_url = management_url.rstrip("/") if management_url else None
        self._experiments = as_source(experiments)  # a fixed list is checked for unique keys
        if fallback is not None and not callable(fallback):
            fallback = tuple(fallback)  # a snapshot: later edits of the caller's list do not leak
        self._fallback = fallback
        self._on_exposure = on_exposure or _log_exposure
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._fallback_reasons: Counter = Counter()
        policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        if not isinstance(cooldown, Cooldown):
            cooldown = Cooldown(base=cooldown, max=max(cooldown, Cooldown.max))
        tokens = token_sources(urls, token, token_file, management_token)
        self._hosts = HostPool([Host(u, t) for u, t in zip(urls, tokens)], cooldown)
        # versions() asks one management address, with the first host's keys
        self._management = (HostPool([Host(self.management_url, tokens[0])], cooldown)
                            if self.management_url else None)
        self._transport = Transport(
            session=session,
            pool_size=pool_size,
            timeout=timeout,
            policy=policy,
            count=self._count,
            hosts=len(urls),
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self._transport.close()
        self._experiments.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.base_url if len(self.base_urls) == 1 else list(self.base_urls)
        return f"Client({where!r}, model={self.model!r}, experiments={len(self.experiments)})"

    # -- calls ---------------------------------------------------------------------------------
    def recommend(
        self,
        history: Sequence[HistoryItem],
        k: int = 10,
        *,
        user_id: Optional[str] = None,
        exclude: Optional[Sequence[ItemId]] = None,
        candidates: Optional[Sequence[ItemId]] = None,
        exclude_seen: bool = True,
        now: Optional[Timestamp] = None,
        version: Optional[str] = None,
    ) -> Recommendations:
        """Top-``k`` items for a history (oldest first). ``version`` pins a model version and
        bypasses the experiments (no exposure is logged for such a call)."""
        request = RecommendRequest(
            history=history, k=k, user_id=user_id, exclude=exclude, candidates=candidates,
            exclude_seen=exclude_seen, now=now, version=version,
        )
        return self._recommend(request)

    def recommend_many(
        self,
        requests: Iterable[Union[RecommendRequest, Mapping[str, Any]]],  # noqa: F811 (shadows the module here only)
        max_workers: Optional[int] = None,
        *,
        return_exceptions: bool = False,
    ) -> List[Any]:
        """Many recommendations at once (a page with many users), answered in the order asked.

        Items are :class:`RecommendRequest` or dicts of :meth:`recommend`'s arguments. Runs on
        up to ``max_workers`` threads (default ``pool_size``). A failed request raises its
        error once all are done, or, with ``return_exceptions=True``, stands in the list."""
        reqs = [r if isinstance(r, RecommendRequest) else RecommendRequest(**r) for r in requests]
        if not reqs:
            return []
        workers = min(len(reqs), max_workers or self._pool_size)
        if workers <= 1:
            outcomes = [self._outcome(r) for r in reqs]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seqrec") as pool:
                outcomes = list(pool.map(self._outcome, reqs))
        if not return_exceptions:
            for out in outcomes:
                if isinstance(out, SeqrecError):
                    raise out
        return outcomes

    def ready(self) -> bool:
        """True when the model answers a real prediction (``{"history": [], "k": 1}``) with 200,
        on the default version and on every version an experiment sends traffic to. Unlike
        ``/ping``, which says Healthy while workers are still loading. With several hosts: when
        one host at least answers all of them (calls fail over to it); each check also counts
        as a probe of its host. Never raises for a server-side reason: logs why at WARNING and
        returns False."""
        versions = self._experiments.current().versions()
        ready = False
        for host in self._hosts.hosts:
            try:
                for version in versions:
                    self._transport.request("POST", self._hosts, self._predict_path(version),
                                            json_body={"history": [], "k": 1}, retries=0,
                                            host=host)
                ready = True
            except SeqrecError as e:
                log.warning("seqrec: not ready: %s", e)
        return ready

    def versions(self) -> Tuple[ModelVersion, ...]:
        """The model's registered versions and their workers, from TorchServe's management API
        (``GET <management_url>/models/<model>/all``); needs ``management_url``."""
        if self._management is None:
            raise ValueError("versions() needs Client(management_url=...), e.g. port 8081")
        path = f"/models/{quote(self.model, safe='')}/all"
        url = self.management_url + path
        resp, _ = self._transport.request("GET", self._management, path, token_kind="management")
        try:
            described = resp.json()
            return tuple(
                ModelVersion(
                    version=str(d["modelVersion"]),
                    ready_workers=sum(1 for w in d.get("workers", []) if w.get("status") == "READY"),
                    workers=len(d.get("workers", [])),
                    batch_size=d.get("batchSize"),
                    max_batch_delay_ms=d.get("maxBatchDelay"),
                    url=d.get("modelUrl"),
                )
                for d in described
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ServerError(f"unreadable model description: {e}", status=resp.status_code,
                              url=url, body=resp.text) from e

    def assignment(self, user_id: Optional[str]) -> Optional[Tuple[Experiment, Variant]]:
        """The experiment and variant this client would use for ``user_id``, without a request."""
        return self._experiments.current().assign(user_id)

    @property
    def experiments(self) -> Tuple[Experiment, ...]:
        """The experiments in force now (a source may have refreshed them)."""
        return self._experiments.current().experiments

    @property
    def stats(self) -> ClientStats:
        """A consistent snapshot of the counters (requests, fallbacks by reason, retries...),
        with each host's own (``stats.hosts[base_url]``)."""
        with self._lock:
            c = dict(self._counts)
            reasons = MappingProxyType(dict(self._fallback_reasons))
        hosts = MappingProxyType(self._hosts.snapshot())
        return ClientStats(fallback_reasons=reasons, hosts=hosts, **c)

    # -- internals -----------------------------------------------------------------------------
    def _count(self, name: str, reason: Optional[str] = None) -> None:
        with self._lock:
            self._counts[name] += 1
            if reason is not None:
                self._fallback_reasons[reason] += 1

    def _predict_path(self, version: Optional[str]) -> str:
        path = f"/predictions/{quote(self.model, safe='')}"
        return f"{path}/{quote(version, safe='')}" if version else path

    def _outcome(self, request: RecommendRequest) -> Union[Recommendations, SeqrecError]:
        try:
            return self._recommend(request)
        except SeqrecError as e:
            return e

    def _recommend(self, request: RecommendRequest) -> Recommendations:
        start = time.perf_counter()
        self._count("requests")
        snapshot = self._experiments.current()  # one definition per call, even mid-refresh
        assigned = snapshot.assign(request.user_id) if request.version is None else None
        exp, variant = assigned if assigned else (None, None)
        version = request.version or (variant.model_version if variant else snapshot.default_version)
        try:
            resp, host = self._transport.request("POST", self._hosts, self._predict_path(version),
                                                 json_body=request.body())
            recs = self._parse(resp, host.url, exp, variant, start)
            self._count("ok")
        except SeqrecError as e:
            reason = next((r for cls, r in _FALLBACK_REASONS if isinstance(e, cls)), None)
            if self._fallback is None or reason is None:
                self._count("errors")
                raise
            recs = self._serve_fallback(request, e, reason, exp, variant, start)
        if exp is not None and variant is not None:
            self._expose(exp, variant, request, recs)
        return recs

    def _parse(self, resp: requests.Response, host: str, exp: Optional[Experiment],
               variant: Optional[Variant], start: float) -> Recommendations:
        try:
            data = resp.json()
            items = tuple(ScoredItem(d["item_id"], float(d["score"])) for d in data["items"])
            unknown = tuple(data.get("unknown_items") or ())
        except (ValueError, KeyError, TypeError) as e:
            raise ServerError(f"unreadable answer: {e}", status=resp.status_code, url=resp.url,
                              body=resp.text[:2000],
                              request_id=resp.headers.get("x-request-id")) from e
        flag = data.get("fallback")  # the handler's popular-items flag, e.g. "popular"
        rec_id = data.get("recommendation_id")
        return Recommendations(
            items=items,
            model=str(data.get("model") or self.model),
            model_version=data.get("model_version"),
            recommendation_id=rec_id if isinstance(rec_id, str) and rec_id else uuid.uuid4().hex,
            variant=variant.name if variant else None,
            experiment=exp.key if exp else None,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            unknown_items=unknown,
            server_fallback=None if not flag else ("true" if flag is True else str(flag)),
            host=host,
        )

    def _serve_fallback(self, request: RecommendRequest, error: SeqrecError, reason: str,
                        exp: Optional[Experiment], variant: Optional[Variant],
                        start: float) -> Recommendations:
        try:
            produced = self._fallback(request) if callable(self._fallback) else self._fallback
            items = _filter_fallback(produced or (), request)
        except Exception:  # the fallback itself failed: the original error is the news
            log.exception("seqrec: fallback failed after %s; raising the original error", reason)
            self._count("errors")
            raise error
        self._count("fallbacks", reason)
        log.warning("seqrec: served %d fallback items (%s) for user %s: %s",
                    len(items), reason, request.user_id, error)
        return Recommendations(
            items=items,
            model=self.model,
            model_version=variant.model_version if variant else request.version,
            recommendation_id=uuid.uuid4().hex,
            variant=variant.name if variant else None,
            experiment=exp.key if exp else None,
            fallback=True,
            fallback_reason=reason,
            latency_ms=(time.perf_counter() - start) * 1000.0,
        )

    def _expose(self, exp: Experiment, variant: Variant, request: RecommendRequest,
                recs: Recommendations) -> None:
        exposure = Exposure(
            experiment_key=exp.key,
            variant=variant.name,
            variation_id=exp.variation_id(variant),
            user_id=str(request.user_id),
            model_version=recs.model_version,
            recommendation_id=recs.recommendation_id,
            item_ids=recs.item_ids,
            timestamp=time.time(),
            fallback=recs.fallback,
        )
        try:
            self._on_exposure(exposure)
            self._count("exposures")
        except Exception:  # a logging sink must never break the page
            self._count("exposure_errors")
            log.exception("seqrec: on_exposure failed for %s", exposure.recommendation_id)


def _filter_fallback(produced: Sequence[Union[ItemId, ScoredItem]],
                     request: RecommendRequest) -> Tuple[ScoredItem, ...]:
    """Apply the request's own rules (exclude_seen, exclude, candidates, k) to fallback items,
    comparing ids as strings since the contract lets "42" and 42 name the same item."""
    banned = {str(i) for i in request.exclude or ()}
    if request.exclude_seen:
        banned |= {str(i) for i in request.history_ids()}
    allowed = {str(i) for i in request.candidates} if request.candidates is not None else None
    out: List[ScoredItem] = []
    for entry in produced:
        item = entry if isinstance(entry, ScoredItem) else ScoredItem(entry, 0.0)
        key = str(item.item_id)
        if key in banned or (allowed is not None and key not in allowed):
            continue
        banned.add(key)  # no duplicates
        out.append(item)
        if len(out) == request.k:
            break
    return tuple(out)
