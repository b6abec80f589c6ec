"""Experiments defined in GrowthBook: read a features payload, refresh it on an interval.

    source = GrowthBookSource(url="https://cdn.growthbook.io/api/features/sdk-abc123",
                              feature="seqrec-model", refresh_s=60)
    client = Client("http://127.0.0.1:8080", experiments=source)

The mapping: one GrowthBook feature (a string feature, here "seqrec-model") whose values are
model versions. Its ``defaultValue`` is the version for users outside every experiment (null:
the server's default version); each of its experiment rules is one :class:`Experiment`, in rule
order, with the rule's ``variations`` as the arms' versions (a string, or an object with a
"model_version" string), ``meta[i].key`` / ``meta[i].name`` as variation id and name, and
``key``, ``seed``, ``weights``, ``coverage``, ``hashVersion`` (1 when absent, as in GrowthBook)
and ``namespace`` as GrowthBook reads them. The user id passed to ``recommend`` is the value of
the ``hashAttribute`` (``attribute=``, "id" by default).

Rules this SDK cannot evaluate the way GrowthBook would (targeting conditions, prerequisites,
force/rollout rules, filters, explicit ranges, bandits, holdout passthrough, another
``hashAttribute``) make the payload unusable: :class:`ExperimentPayloadError`, never a silent
difference from what GrowthBook assigns. Encrypted payloads are refused too (decrypting needs
a crypto library; turn encryption off for this SDK connection).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import requests

from .errors import ConnectionFailed, SeqrecError
from .experiment_source import ExperimentSet
from .experiments import Experiment
from .models import Variant

__all__ = ["ExperimentPayloadError", "SourceStatus", "GrowthBookSource", "parse_features"]

log = logging.getLogger("seqrec_sdk")

# Rule fields whose meaning this SDK does not evaluate; present and non-empty -> refused.
_UNSUPPORTED = {
    "condition": "targeting conditions need the user's attributes",
    "parentConditions": "prerequisite features are not evaluated",
    "force": "force and rollout rules are not experiments",
    "filters": "filters are not evaluated (use namespace)",
    "ranges": "explicit bucket ranges are not supported (use weights and coverage)",
    "range": "explicit bucket ranges are not supported (use weights and coverage)",
    "contextualVariations": "contextual bandits are not supported",
    "contextualBanditRef": "contextual bandits are not supported",
}


class ExperimentPayloadError(SeqrecError, ValueError):
    """A GrowthBook payload this SDK cannot turn into experiments (the message says where)."""


@dataclass(frozen=True)
class SourceStatus:
    """How the source's refreshes went: ``loaded_at`` (unix seconds) of the definitions in
    force, the last failure's message (None after a success) and the failures so far."""

    loaded_at: float
    last_error: Optional[str]
    failures: int
    refreshes: int


def _fail(where: str, why: str) -> ExperimentPayloadError:
    return ExperimentPayloadError(f"GrowthBook payload: {where}: {why}")


def _version_of(value: Any, where: str) -> str:
    if isinstance(value, Mapping):
        value = value.get("model_version")
    if not isinstance(value, str) or not value:
        raise _fail(where, f"a variation must be a model version string (or an object with "
                           f"a 'model_version' string), got {value!r}")
    return value


def _rule_experiment(rule: Any, feature: str, index: int, attribute: str) -> Experiment:
    where = f"feature {feature!r} rule {index}"
    if not isinstance(rule, Mapping):
        raise _fail(where, f"a rule must be an object, got {type(rule).__name__}")
    for name, why in _UNSUPPORTED.items():
        if rule.get(name) not in (None, {}, []):
            raise _fail(where, f"'{name}' is set: {why}")
    variations = rule.get("variations")
    if not isinstance(variations, list) or len(variations) < 2:
        raise _fail(where, "an experiment rule needs 'variations' (two or more)")
    hash_attribute = rule.get("hashAttribute") or "id"
    if hash_attribute != attribute:
        raise _fail(where, f"hashAttribute is {hash_attribute!r}; this source hashes the "
                           f"user id as {attribute!r} (GrowthBookSource(attribute=...))")
    meta = rule.get("meta") or []
    if not isinstance(meta, list) or meta and len(meta) != len(variations):
        raise _fail(where, "'meta' must have one entry per variation")
    if any(isinstance(m, Mapping) and m.get("passthrough") for m in meta):
        raise _fail(where, "passthrough variations (holdouts) are not supported")
    weights = rule.get("weights")
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(variations)):
        raise _fail(where, "'weights' must have one number per variation")
    variants = []
    for i, value in enumerate(variations):
        m = meta[i] if meta and isinstance(meta[i], Mapping) else {}
        key = str(m["key"]) if m.get("key") not in (None, "") else str(i)
        name = str(m["name"]) if m.get("name") not in (None, "") else key
        variants.append(Variant(name, _version_of(value, f"{where} variation {i}"),
                                None if weights is None else weights[i], key=key))
    namespace = rule.get("namespace")
    coverage = rule.get("coverage")
    try:
        return Experiment(
            str(rule.get("key") or feature),  # GrowthBook: the rule's key, else the feature's
            variants,
            coverage=1.0 if coverage is None else coverage,
            seed=rule.get("seed") or None,  # GrowthBook: an empty seed means the key
            namespace=tuple(namespace) if isinstance(namespace, list) else namespace,
            hash_version=rule.get("hashVersion") or 1,
        )
    except (ValueError, TypeError) as e:  # weights not summing to 1, coverage > 1, ...
        raise _fail(where, str(e)) from e


def parse_features(payload: Any, feature: str, attribute: str = "id") -> ExperimentSet:
    """A GrowthBook SDK payload (``{"features": {...}}``) -> the feature's experiments and
    default version; :class:`ExperimentPayloadError` if the payload cannot be used as is."""
    if not isinstance(payload, Mapping):
        raise _fail("top level", f"expected a JSON object, got {type(payload).__name__}")
    if "features" not in payload and "encryptedFeatures" in payload:
        raise _fail("top level", "the payload is encrypted; turn off encryption for this SDK "
                                 "connection or decrypt it before passing it")
    features = payload.get("features")
    if not isinstance(features, Mapping):
        raise _fail("top level", "no 'features' object")
    if feature not in features:
        raise _fail(f"feature {feature!r}", f"not in the payload (it has {sorted(features)[:20]})")
    definition = features[feature]
    if not isinstance(definition, Mapping):
        raise _fail(f"feature {feature!r}", "must be an object")
    default = definition.get("defaultValue")
    default_version = None if default in (None, "") else _version_of(
        default, f"feature {feature!r} defaultValue")
    rules = definition.get("rules", [])
    if not isinstance(rules, list):
        raise _fail(f"feature {feature!r}", "'rules' must be a list")
    experiments = tuple(_rule_experiment(r, feature, i, attribute) for i, r in enumerate(rules))
    try:
        return ExperimentSet(experiments, default_version)
    except ValueError as e:  # two rules with one experiment key
        raise _fail(f"feature {feature!r}", str(e)) from e


class GrowthBookSource:
    """Experiments from a GrowthBook payload at ``url`` (an SDK endpoint,
    ``<api host>/api/features/<client key>``) or in the JSON file at ``path``.

    Loaded once at construction (a failure raises: a wrong URL or feature name should stop a
    deploy), then every ``refresh_s`` seconds on a daemon thread (None: never). A refresh that
    fails (unreachable, not JSON, unusable) is logged at WARNING and the last good definitions
    stay in force. Thread-safe; :meth:`close` stops the thread (``Client.close`` calls it).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        path: Union[str, Path, None] = None,
        feature: str,
        attribute: str = "id",
        refresh_s: Optional[float] = 60.0,
        timeout: Union[float, Tuple[float, float]] = (2.0, 5.0),
        session: Optional[requests.Session] = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url= or path=")
        if refresh_s is not None and refresh_s <= 0:
            raise ValueError("refresh_s must be > 0 seconds, or None for no refresh")
        self.url, self.path = url, Path(path) if path is not None else None
        self.feature, self.attribute, self.refresh_s = feature, attribute, refresh_s
        self._timeout = timeout
        self._own_session = session is None
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures = self._refreshes = 0
        self._last_error: Optional[str] = None
        self._set = self._load()  # raises: no good definitions to fall back on yet
        self._loaded_at = time.time()
        self._thread: Optional[threading.Thread] = None
        if refresh_s is not None:
            self._thread = threading.Thread(target=self._run, name="seqrec-growthbook",
                                            daemon=True)
            self._thread.start()

    def current(self) -> ExperimentSet:
        with self._lock:
            return self._set

    def refresh(self) -> ExperimentSet:
        """Load now; on failure raise and keep the definitions in force (and count it)."""
        try:
            new = self._load()
        except Exception as e:
            with self._lock:
                self._failures += 1
                self._last_error = str(e)
            raise
        with self._lock:
            changed = new != self._set
            self._set, self._loaded_at, self._last_error = new, time.time(), None
            self._refreshes += 1
        if changed:
            log.info("seqrec: GrowthBook feature %r now has experiments %s, default %s",
                     self.feature, [e.key for e in new.experiments], new.default_version)
        return new

    def status(self) -> SourceStatus:
        with self._lock:
            return SourceStatus(self._loaded_at, self._last_error, self._failures,
                                self._refreshes)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._own_session:
            self._session.close()

    def __enter__(self) -> "GrowthBookSource":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GrowthBookSource({self.url or str(self.path)!r}, feature={self.feature!r})"

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except (SeqrecError, OSError, ValueError) as e:
                log.warning("seqrec: GrowthBook refresh of %r failed, keeping the definitions "
                            "loaded at %s: %s", self.feature, time.ctime(self._loaded_at), e)
            except Exception:  # the thread must outlive a bug in one refresh
                log.exception("seqrec: GrowthBook refresh of %r failed", self.feature)

    def _load(self) -> ExperimentSet:
        if self.path is not None:
            text = self.path.read_text(encoding="utf-8")
        else:
            try:
                resp = self._session.get(self.url, timeout=self._timeout)  # type: ignore[arg-type]
            except requests.RequestException as e:
                raise ConnectionFailed(f"GrowthBook payload: {e}", url=self.url) from e
            if resp.status_code != 200:
                raise ExperimentPayloadError(
                    f"GrowthBook payload: HTTP {resp.status_code}", status=resp.status_code,
                    url=self.url, body=resp.text[:2000])
            text = resp.text
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise ExperimentPayloadError(f"GrowthBook payload: not JSON: {e}",
                                         url=self.url or str(self.path)) from e
        return parse_features(payload, self.feature, self.attribute)
