"""Simulated users for an online A/B test on the synthetic marketplace (bench/ab.py, tests/test_ab_sim.py).

    users = simulated_users(prepare(cfg))             # one per test case of the leave-one-out split
    payload_file = write_payload(dir, "ab-key", ["stage-2", "all-stages"], seed="ab-key")
    with Client(url, experiments=GrowthBookSource(path=payload_file, feature=FEATURE, refresh_s=None),
                on_exposure=exposure_log.write) as client:
        enrolled = run_test(client, users, plan, ["control", "treatment"], outcome_log.write)

A simulated user is a test case of the generator's log: the history is every event before the
user's last one (what the model was never trained on is the last event; the one before it was
validation), the request's moment `now` is the last event's time, and the user's ground truth is
that last item: the click model is "the user clicks when the list shown contains the item they
really went to next" (one click at most per list, deterministic). The server's catalogue holds
every trained item; each request excludes the items that were not on sale at the user's moment
(listed later, or sold before), as a backend passes its out-of-stock ids, so the served list
ranks what the user could really have been shown.

Users arrive in a seeded random order and the SDK buckets them; the test stops once every arm has
its planned users (fixed horizon: the readout decides once). `replay_session` answers the SDK
with answers recorded from TorchServe, for A/A repeats that re-bucket the same users cheaply.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import numpy as np
import requests
from requests.adapters import BaseAdapter

from seqrec_sdk import Client, Event, Outcome, RecommendRequest
from seqrec_sdk.readout import Plan

FEATURE = "seqrec-model"  # the GrowthBook feature whose values are model versions
K = 10  # list length: the click model's "shown" is the top 10, as the offline HR@10
REPLAY_URL = "http://replay.invalid"


@dataclass(frozen=True)
class SimUser:
    user_id: str
    history: Tuple[Event, ...]  # oldest first, with time, type and source as the log has them
    now: float  # the moment of the request: the time of the user's next (held-out) event
    target: int  # the raw id of the item the user went to next
    exclude: Tuple[int, ...]  # catalogue items not on sale at `now`

    def request(self, **kw) -> RecommendRequest:
        return RecommendRequest(self.history, k=K, user_id=self.user_id, exclude=self.exclude,
                                now=self.now, **kw)


def simulated_users(prep) -> List[SimUser]:
    """One user per test case of `prep` (train.pipeline.prepare on the synthetic marketplace)."""
    ev, cases, ids = prep.events, prep.split.test, prep.index.ids
    items = prep.items.set_index("item_id").reindex(ids)
    listed = items["listed_at"].to_numpy(dtype=float)
    sold = items["sold_at"].fillna(np.inf).to_numpy(dtype=float)  # NaN: never sold
    catalogue = np.asarray(ids, dtype=np.int64)
    raw = ev["item_id"].to_numpy()
    ts = ev["timestamp"].to_numpy(dtype=float)
    etype, source = ev["event_type"].astype(str).to_numpy(), ev["source"].astype(str).to_numpy()
    users = []
    for a, b, now, user in zip(cases.histories.starts.tolist(), cases.histories.stops.tolist(),
                               cases.now.tolist(), cases.users.tolist()):
        history = tuple(Event(int(raw[r]), float(ts[r]), etype[r], source[r]) for r in range(a, b))
        # On sale at `now`: listed by then, not sold before (the user's own purchase at `now` counts).
        off_sale = catalogue[(listed > now) | (sold < now)]
        users.append(SimUser(str(user), history, float(now), int(raw[b]), tuple(off_sale.tolist())))
    return users


def arrival_order(n: int, seed: int) -> List[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


def growthbook_payload(key: str, versions: Sequence[str], names: Sequence[str], seed: str,
                       default: Optional[str] = None) -> dict:
    """A GrowthBook SDK payload: feature FEATURE with one 50/50 experiment rule over `versions`."""
    n = len(versions)
    return {"features": {FEATURE: {"defaultValue": default or versions[0], "rules": [{
        "key": key, "seed": seed, "hashVersion": 2, "coverage": 1.0,
        "variations": list(versions), "weights": [1.0 / n] * n,
        "meta": [{"key": str(i), "name": name} for i, name in enumerate(names)]}]}}}


def write_payload(folder: Path, key: str, versions: Sequence[str], names: Sequence[str],
                  seed: str) -> Path:
    path = Path(folder) / f"growthbook-{key}.json"
    path.write_text(json.dumps(growthbook_payload(key, versions, names, seed), indent=2))
    return path


def run_test(client: Client, users: Sequence[SimUser], order: Sequence[int], plan: Optional[Plan],
             arms: Sequence[str], on_click: Callable[[Outcome], None], chunk: int = 64,
             workers: int = 4) -> Dict[str, int]:
    """Serve users in `order` through `client` (its experiment buckets them and logs the
    exposures), log a click Outcome when the list holds the user's next item, and stop after the
    chunk in which every arm reached the plan's users (all users when plan is None). Returns the
    users enrolled per variant name."""
    enrolled: Counter = Counter()
    for start in range(0, len(order), chunk):
        batch = [users[i] for i in order[start:start + chunk]]
        answers = client.recommend_many([u.request() for u in batch], max_workers=workers)
        for u, recs in zip(batch, answers):
            if recs.variant is None:
                continue  # not in the experiment (coverage < 1)
            enrolled[recs.variant] += 1
            if u.target in recs.item_ids:
                on_click(Outcome(recs.recommendation_id, u.target, "click", timestamp=time.time(),
                                 user_id=u.user_id))
        if plan is not None and all(enrolled[a] >= need for a, need in zip(arms, plan.users_per_variant)):
            break
    return {a: enrolled[a] for a in arms}


def pinned_answers(client: Client, users: Sequence[SimUser], version: str,
                   workers: int = 4) -> List[Tuple[int, ...]]:
    """Every user's list from one version (`version=` bypasses the experiments: no exposure)."""
    answers = client.recommend_many([u.request(version=version) for u in users], max_workers=workers)
    return [r.item_ids for r in answers]


# -- recorded answers ---------------------------------------------------------------------------
_USER = re.compile(rb'"user_id": "((?:[^"\\]|\\.)*)"')


def _key(request: requests.PreparedRequest) -> Tuple[str, str]:
    """(version from /predictions/<model>/<version>, user_id of the JSON body). The id is read with
    a regex, not by parsing 10 kB of history per replayed call; it is as the body spells it."""
    parts = urlsplit(request.url).path.split("/")
    version = unquote(parts[3]) if len(parts) > 3 else ""
    body = request.body.encode() if isinstance(request.body, str) else request.body
    m = _USER.search(body)
    return version, m.group(1).decode() if m else ""


class Recorder:
    """A response hook for a requests.Session: keeps (request body, status, answer) per
    (version, user) of every /predictions call the client made."""

    def __init__(self) -> None:
        self.answers: Dict[Tuple[str, str], Tuple[bytes, int, bytes]] = {}
        self._lock = threading.Lock()

    def __call__(self, resp: requests.Response, *args, **kwargs) -> None:
        body = resp.request.body
        body = body.encode() if isinstance(body, str) else body
        with self._lock:
            self.answers[_key(resp.request)] = (body, resp.status_code, resp.content)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.hooks["response"].append(self)
        return s


class ReplayAdapter(BaseAdapter):
    """Answers each /predictions request with the recorded answer of the same version and user;
    the request body must be byte-identical to the recorded one (the same question)."""

    def __init__(self, answers: Dict[Tuple[str, str], Tuple[bytes, int, bytes]]) -> None:
        super().__init__()
        self.answers = answers

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        body = request.body.encode() if isinstance(request.body, str) else request.body
        key = _key(request)
        recorded = self.answers.get(key)
        if recorded is None or recorded[0] != body:
            raise AssertionError(f"replay: no recorded answer to this request of {key}")
        resp = requests.Response()
        resp.status_code, resp._content = recorded[1], recorded[2]
        resp.headers["Content-Type"] = "application/json"
        resp.url, resp.request, resp.encoding = request.url, request, "utf-8"
        return resp

    def close(self) -> None:
        pass


def replay_session(answers: Dict[Tuple[str, str], Tuple[bytes, int, bytes]]) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxy lookups per call
    s.mount(REPLAY_URL + "/", ReplayAdapter(answers))
    return s
