"""The SDK assigns what GrowthBook's own Python SDK assigns, for the same payload and users.

`growthbook` (PyPI, 4.x) is a test-only dependency (requirements.txt); the SDK never imports it.
Each payload's feature is evaluated by GrowthBook (`eval_feature`) and by the SDK's
`GrowthBookSource` parse + `Client.assignment` logic for 4,000 users; experiment key, variation
id and model version (or the default for users outside every rule) must agree for every user.
"""

import pytest

import growthbook  # test-only dependency; a missing install fails here rather than skipping

from seqrec_sdk.growthbook_source import parse_features

FEATURE = "seqrec-model"
USERS = [f"user-{i}" for i in range(3000)] + [str(i) for i in range(900)] + \
    ["", "ünïcødé", "a\U0001F600b", "😀", "x" * 200] + [f"{i:08x}-c0ffee" for i in range(95)]

PAYLOADS = {
    "uneven weights, coverage < 1, seed, hash v2": [
        {"key": "ranker-a", "variations": ["1.0", "2.0", "3.0"], "weights": [0.5, 0.3, 0.2],
         "coverage": 0.45, "seed": "d41b-7a", "hashVersion": 2, "hashAttribute": "id",
         "meta": [{"key": "control", "name": "Control"}, {"key": "gru", "name": "GRU"},
                  {"key": "sasrec", "name": "SASRec"}]},
    ],
    "hash v1 (no hashVersion), no seed, no meta": [
        {"key": "legacy-test", "variations": ["1.0", "2.0"], "weights": [0.2, 0.8],
         "coverage": 0.7},
    ],
    "namespaces, two rules in order, explicit hash v1": [
        {"key": "ns-left", "variations": ["1.0", "2.0"], "coverage": 0.9, "hashVersion": 2,
         "namespace": ["rankers", 0, 0.4], "seed": "left"},
        {"key": "ns-right", "variations": ["1.0", "3.0"], "weights": [0.65, 0.35],
         "coverage": 1, "hashVersion": 1, "namespace": ["rankers", 0.4, 1.0]},
        {"key": "catch-all", "variations": ["2.0", "3.0"], "coverage": 0.3, "hashVersion": 2},
    ],
    "json variations, no rule key (the feature's)": [
        {"variations": [{"model_version": "1.0"}, {"model_version": "2.0"}],
         "weights": [0.9, 0.1], "hashVersion": 2, "meta": [{"key": "0"}, {"key": "1"}]},
    ],
}


def growthbook_assignments(features):
    gb = growthbook.GrowthBook(features=features)
    out = []
    for user in USERS:
        gb.set_attributes({"id": user})
        r = gb.eval_feature(FEATURE)
        if r.source == "experiment":
            out.append((r.experiment.key, r.experimentResult.key, r.value))
        else:
            out.append((None, None, r.value))
    gb.destroy()
    return out


def sdk_assignments(features):
    snapshot = parse_features({"features": features}, FEATURE)
    out = []
    for user in USERS:
        assigned = snapshot.assign(user)
        if assigned:
            exp, variant = assigned
            out.append((exp.key, exp.variation_id(variant), variant.model_version))
        else:
            out.append((None, None, snapshot.default_version))
    return out


def as_version(value):
    return value["model_version"] if isinstance(value, dict) else value


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_same_variation_as_growthbook_for_every_user(name):
    features = {FEATURE: {"defaultValue": "1.0", "rules": PAYLOADS[name]},
                "unrelated": {"defaultValue": False}}
    theirs = [(k, v, as_version(val)) for k, v, val in growthbook_assignments(features)]
    ours = sdk_assignments(features)
    mismatches = [(u, a, b) for u, a, b in zip(USERS, ours, theirs) if a != b]
    assert mismatches == []
    # the payload really exercises its arms: every variation and the outside are populated
    seen = {(k, v) for k, v, _ in ours}
    for rule in PAYLOADS[name]:
        key = rule.get("key", FEATURE)
        for i, meta in enumerate(rule.get("meta") or [{"key": str(i)} for i in range(len(rule["variations"]))]):
            assert (key, meta["key"]) in seen
    if name != "json variations, no rule key (the feature's)":  # coverage 1 there
        assert (None, None) in seen
