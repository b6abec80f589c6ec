"""The simulated online test of bench/ab.py, small: a trained model against a deliberately weak one
(the same config, one epoch at lr 1e-6: its random initial vectors), both served by one real
TorchServe, simulated users through the SDK, the readout deciding; then an A/A test on the trained
version, live and replayed.

    .venv/bin/python -m pytest -q tests/test_ab_sim.py

Everything is written under pytest's tmp_path, never to bench/results.
"""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from torchserve_fixtures import requires_java

from bench import ab_sim
from bench.ab import report, serve, simulate, train_version
from seqrec_sdk.readout import plan_test
from train.config import TrainConfig
from train.pipeline import prepare

pytestmark = [pytest.mark.torchserve, pytest.mark.training, requires_java]

TINY = {"data": "synthetic", "synthetic_users": 600, "synthetic_items": 400, "epochs": 15, "batch_size": 64,
        "lr": 0.01, "sample_size": 128, "max_eval_users": 200, "num_threads": 1,
        "model": {"embedding_dim": 16, "hidden_dim": 32, "total_length": 20}}
WEAK = ["epochs=1", "lr=1e-6"]
# The experiments' and arrival orders' seed. 1, not 0: seed 0's live A/A p-value is 0.065, close
# enough to alpha that last-bit float differences in another machine's training could flip the
# fixed-seed A/A check; seed 1's is 0.80 (both seen as replays of the same recorded answers).
SEED = 1


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    work = tmp_path_factory.mktemp("ab_sim")
    base = TrainConfig.from_dict(TINY)
    versions = [train_version(base, WEAK, "weak", work / "weak"), train_version(base, [], "trained", work / "trained")]
    users = ab_sim.simulated_users(prepare(base))
    # A plan fixed up front (the bench takes the control's validation rate): 213 users per arm, enough
    # to find the trained model (served click rate ~2x the untrained one's) far beyond the threshold.
    plan = plan_test(baseline=0.15, relative_mde=0.75)
    args = SimpleNamespace(users=TINY["synthetic_users"], items=TINY["synthetic_items"], control="weak",
                           treatment="trained", relative_mde=0.75, seed=SEED)
    with serve(versions, work) as ts:  # kept up for the README's loop below
        sim = simulate(versions, users, plan, plan, work, seed=SEED, aa_repeats=3, ts=ts)
        sim.pop("seconds")
        yield sim, report(args, base, versions, users, **sim), users, plan, ts


def test_simulated_users_are_held_out_next_events_on_sale_at_their_moment(simulated):
    _, _, users, _, _ = simulated
    for u in users:
        assert u.history and u.now >= u.history[-1].timestamp
        assert u.target not in u.exclude  # the item the user went to was on sale then
        assert all(h.timestamp <= u.now for h in u.history)


def test_ab_finds_the_trained_version_in_the_offline_direction(simulated):
    sim, rep, _, plan, _ = simulated
    r = sim["ab"].readout
    assert [a.variant for a in r.arms] == ["weak", "trained"]
    assert all(a.users >= need for a, need in zip(r.arms, plan.users_per_variant))
    assert not r.srm.mismatch and r.users_in_several_arms == 0
    assert r.decision == "winner", r.summary
    lift = r.comparisons[0].lift
    assert lift.ci[0] > 0, lift
    # The offline evaluation of the same users says the same, and so does serving everyone both.
    offline, served = rep["offline"]["same_run"]["diff_HR@10"], rep["served_both_versions"]["diff_ctr"]
    assert offline["of"] == served["of"] == "trained - weak"
    assert offline["ci95"][0] > 0 and served["ci95"][0] > 0
    assert rep["ab"]["agrees_with_offline"] is True
    # Clicks were counted from the records read back: each click is on an item of its list.
    shown = {e["recommendation_id"]: set(e["item_ids"]) for e in sim["ab"].exposures}
    assert sim["ab"].outcomes and all(o["item_id"] in {str(i) for i in shown[o["recommendation_id"]]}
                                      for o in sim["ab"].outcomes)


def test_ab_answers_are_the_pinned_answers(simulated):
    """What licenses the A/A replay: each version answers a user the same way every time."""
    _, rep, _, _, _ = simulated
    same = rep["served_both_versions"]["ab_answers_same_items_as_pinned"]
    assert same["answers"] > 0 and same["same_items"] == same["answers"], same


def test_aa_finds_nothing_and_its_replay_reproduces_the_live_test(simulated):
    sim, rep, _, plan, _ = simulated
    live = sim["aa_live"].readout
    assert live.decision == "no difference", live.summary
    assert {e["model_version"] for e in sim["aa_live"].exposures} == {"trained"}
    assert rep["aa"]["replay_of_live_matches"] is True
    # Other seeds bucket other users: the replays are not copies of one another (arm sizes alone
    # may coincide: seeds aa-0 and aa-1 both split these users 229/219).
    outcomes = {(tuple(x["users"]), tuple(x["clicked"])) for x in rep["aa"]["per_repeat"]}
    assert len(outcomes) == len(rep["aa"]["per_repeat"]) == 3
    assert rep["aa"]["repeats"] == 3 and 0 <= rep["aa"]["share_no_difference"] <= 1
    assert np.isclose(sum(x["decision"] == "no difference" for x in rep["aa"]["per_repeat"]) / 3,
                      rep["aa"]["share_no_difference"])


def readme_loop():
    """The json and python blocks of sdk/README.md's "The whole loop on one page"."""
    text = (Path(__file__).resolve().parents[1] / "sdk/README.md").read_text()
    section = text.split("### 4. The whole loop on one page", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(json|python)\n(.*?)```", section, re.S))


def test_the_readme_loop_runs_against_a_real_torchserve(simulated, tmp_path, monkeypatch, capsys):
    *_, ts = simulated
    blocks = readme_loop()
    # This server's address, key file and version labels in place of the README's.
    code = blocks["python"].replace('"http://127.0.0.1:8080"', repr(ts.base_url))
    code = code.replace('"key_file.json"', repr(str(ts.key_file)))
    payload = blocks["json"].replace('"1.0"', '"weak"').replace('"2.0"', '"trained"')
    assert code.count(ts.base_url) == 1 and str(ts.key_file) in code and payload.count('"trained"') == 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "features.json").write_text(payload)
    exec(compile(code, "sdk/README.md (the whole loop)", "exec"), {"__name__": "readme_loop"})
    exposures = [json.loads(line) for line in (tmp_path / "exposures.jsonl").read_text().splitlines()]
    assert len(exposures) == 500 and {e["model_version"] for e in exposures} == {"weak", "trained"}
    assert (tmp_path / "outcomes.parquet").stat().st_size > 0 and (tmp_path / "lift.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "experiment ranker-2.0-vs-1.0:" in printed and "sample ratio" in printed
