"""Fuzz a real TorchServe: 1,500 hostile and valid requests from 8 concurrent clients, plus what only
the frontend can judge (content types, forms, query strings, bodies over max_request_size).

    .venv/bin/python -m pytest -q tests/reliability/test_fuzz_torchserve.py

Required: every bad request a 4xx with a clear message, every valid one a correct 200 equal to the
in-process handler's answer, zero 5xx, and the worker never restarted (same pid, nothing in the
frontend's log, Requests5XX unchanged). bench/reliability.py runs the same at volume.
"""
import json
import random
import threading
from collections import Counter

import pytest
import requests
from devtools.fuzz_oracle import Catalog, check_answer, same_ranking, worker_input
from devtools.fuzz_requests import generate, http_cases
from handler_fixtures import load_handler, run_batch
from devtools.ts_probes import metric_sum, metrics_text, restarts_logged, worker_pids

pytestmark = pytest.mark.torchserve

N_HTTP = 1500
CLIENTS = 8


def send(ts, case, session: requests.Session):
    """-> (status, parsed body or text); status -1 when no HTTP answer came back at all."""
    headers = {"Content-Type": case.content_type, "Authorization": f"Bearer {ts.key}"}
    try:
        r = session.post(f"{ts.base_url}/predictions/seqrec{case.query}", data=case.data, headers=headers,
                         timeout=120)
    except requests.RequestException as e:
        return -1, f"no answer: {e!r}"
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text[:500]


def fuzz_http(ts, cases, clients: int = CLIENTS):
    results = [None] * len(cases)
    todo = iter(range(len(cases)))
    lock = threading.Lock()

    def client():
        with requests.Session() as s:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                results[i] = send(ts, cases[i], s)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture(scope="module")
def reference(served):
    """The same export in this process: what each valid request must be answered."""
    return load_handler(served.export)


def test_fuzz_through_torchserve(served, reference):
    cat = Catalog.from_export(served.export)
    extra = http_cases(cat)
    cases = list(generate(cat, N_HTTP - len(extra), seed=3)) + extra
    random.Random(3).shuffle(cases)
    pids, restarts = worker_pids(served), restarts_logged(served)
    errors_5xx = metric_sum(metrics_text(served), "Requests5XX")

    results = fuzz_http(served, cases)

    failures, statuses = [], Counter()
    h, ctx = reference
    for case, (status, body) in zip(cases, results):
        statuses[status] += 1
        problem = check_answer(case, status, body, cat)
        if problem is None and case.valid:
            [want] = run_batch(h, ctx, [worker_input(case)])
            problem = same_ranking(body, json.loads(want))
            problem = problem and f"differs from the in-process answer: {problem}"
        if problem:
            failures.append((case.kind, case.content_type, case.data[:150], problem))
    assert not failures, f"{len(failures)} of {len(cases)} wrong:\n" + "\n".join(map(str, failures[:15]))
    assert len(cases) == N_HTTP and not [s for s in statuses if s >= 500 or s < 0], statuses
    assert worker_pids(served) == pids, "a worker was restarted"
    assert restarts_logged(served) == restarts, served.logs()
    assert metric_sum(metrics_text(served), "Requests5XX") == errors_5xx
