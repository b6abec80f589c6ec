"""The readout from records: exact counts, the decision rules, simulated tests through the
whole pipeline (A/A stays quiet at about alpha, a planted lift is found, also through a real
Client and HTTP server), and the cumulative-lift series and chart."""

import random

import pytest

from seqrec_sdk import Client, Experiment, Exposure, Outcome, Variant
from seqrec_sdk.readout import format_readout, plan_test, readout
from seqrec_sdk.readout_plot import cumulative_lift, plot_cumulative_lift
from seqrec_sdk.stats import relative_lift

AB = Experiment("ab", [Variant("control", "1.0", 0.5), Variant("treatment", "2.0", 0.5)])


def exp_record(rec_id, user, variant, items=(1, 2, 3), t=0.0, fallback=False, key="ab"):
    return Exposure(key, variant, user, "1.0" if variant == "control" else "2.0", rec_id,
                    tuple(items), t, fallback, "0" if variant == "control" else "1")


def test_counts_users_once_drops_users_in_two_arms_and_unshown_clicks():
    exposures = [
        exp_record("r1", "u1", "control"), exp_record("r2", "u1", "control"),  # 2 lists, 1 user
        exp_record("r3", "u2", "control"),
        exp_record("r4", "u3", "treatment"), exp_record("r5", "u4", "treatment", fallback=True),
        exp_record("r6", "u5", "treatment"), exp_record("r7", "u5", "control"),  # both arms
        exp_record("x1", "u6", "treatment", key="other-test"),
    ]
    outcomes = [
        Outcome("r2", 3), ("r1", 1),                      # u1 converts (counted once)
        {"recommendation_id": "r3", "item_id": 99},       # not shown: ignored
        {"recommendation_id": "r4", "item_id": "2", "kind": "convert"},  # not a click
        Outcome("r5", 1), Outcome("r6", 1), Outcome("x1", 1), Outcome("nope", 1),
    ]
    r = readout(exposures, outcomes, AB)
    control, treatment = r.arms
    assert (control.users, control.converted, control.exposures) == (2, 1, 3)
    assert (treatment.users, treatment.converted, treatment.exposures, treatment.fallbacks) == \
        (2, 1, 2, 1)
    assert (control.variation_id, treatment.variation_id) == ("0", "1")
    assert r.users_in_several_arms == 1
    assert r.comparisons[0].lift == relative_lift(1, 2, 1, 2)
    assert r.decision == "no plan"
    converts = readout(exposures, outcomes, AB, kind="convert")
    assert [a.converted for a in converts.arms] == [0, 1]
    per_protocol = readout(exposures, outcomes, AB, include_fallbacks=False)
    assert [a.users for a in per_protocol.arms] == [2, 1]


def simulate(n_users, p_control, p_treatment, seed, experiment=AB):
    """Users hashed into the arms by the experiment itself; each sees one list and clicks its
    first item with the arm's probability."""
    rng = random.Random(seed)
    exposures, outcomes = [], []
    for i in range(n_users):
        user = f"s{seed}-u{i}"
        variant = experiment.assign(user)
        rec_id = f"{seed}-{i}"
        exposures.append(exp_record(rec_id, user, variant.name, t=float(i)))
        p = p_control if variant.name == "control" else p_treatment
        if rng.random() < p:
            outcomes.append(Outcome(rec_id, 1, timestamp=float(i) + 1))
    return exposures, outcomes


def test_decisions_wait_for_the_plan_then_name_the_winner():
    plan = plan_test(0.20, 0.30)
    n = plan.total_users
    early = readout(*simulate(n // 3, 0.20, 0.40, seed=11), AB, plan=plan)
    assert early.comparisons[0].significant  # a big effect is visible early...
    assert early.decision == "collecting"   # ...and still no decision before the plan
    done = readout(*simulate(int(n * 1.1), 0.20, 0.40, seed=12), AB, plan=plan)
    assert done.decision == "winner" and "treatment beats control" in done.summary
    assert done.comparisons[0].lift.ci[0] > 0 and not done.srm.mismatch
    worse = readout(*simulate(int(n * 1.1), 0.40, 0.20, seed=13), AB, plan=plan)
    assert worse.decision == "loser"
    text = format_readout(done)
    assert "treatment vs control: lift +" in text and "sample ratio" in text and "plan:" in text


def test_a_sample_ratio_mismatch_overrides_everything():
    exposures, outcomes = simulate(6000, 0.2, 0.4, seed=14)
    # lose a third of the treatment's exposures, as a broken logger on one version would
    kept = [e for i, e in enumerate(exposures) if e.variant == "control" or i % 3]
    r = readout(kept, outcomes, AB, plan=plan_test(0.2, 0.3))
    assert r.srm.mismatch and r.decision == "srm" and "sample-ratio mismatch" in r.summary
    weighted = Experiment("ab", [Variant("control", "1.0", 0.6), Variant("treatment", "2.0", 0.4)])
    assert not readout(kept, outcomes, weighted).srm.mismatch  # those counts fit 3:2


def test_aa_through_the_pipeline_rejects_at_about_alpha():
    plan = plan_test(0.30, 0.30)
    # 15 % more users than planned, so that hashing's uneven split still fills both arms
    n = round(plan.total_users * 1.15)
    decisions = [readout(*simulate(n, 0.3, 0.3, seed=100 + s), AB, plan=plan).decision
                 for s in range(300)]
    assert decisions.count("collecting") <= 3 and decisions.count("srm") <= 2
    decided = len(decisions) - decisions.count("collecting") - decisions.count("srm")
    false_positive = decisions.count("winner") + decisions.count("loser")
    # 3 binomial standard deviations around alpha = 0.05 (+-0.038 at 300 repeats)
    assert abs(false_positive / decided - 0.05) < 3 * (0.05 * 0.95 / decided) ** 0.5


def test_planted_lift_found_through_a_real_client(server):
    exposures = []
    with Client(server.url, experiments=[AB], on_exposure=exposures.append) as client:
        rng = random.Random(3)
        outcomes = []
        for i in range(1500):
            recs = client.recommend([1, 2, 3], k=5, user_id=f"user-{i}")
            p = 0.15 if recs.variant == "control" else 0.30
            if rng.random() < p:
                outcomes.append(Outcome(recs.recommendation_id, recs.item_ids[0]))
    r = readout(exposures, outcomes, AB, plan=plan_test(0.15, 0.8))
    assert sum(a.users for a in r.arms) == 1500 and not r.srm.mismatch
    assert r.decision == "winner" and r.comparisons[0].variant == "treatment"
    assert r.comparisons[0].lift.ci[0] < 1.0 < r.comparisons[0].lift.ci[1]  # true lift +100 %


def test_cumulative_lift_ends_at_the_readout_and_plots(tmp_path):
    exposures, outcomes = simulate(3000, 0.2, 0.3, seed=21)
    series = cumulative_lift(exposures, outcomes, AB, points=10)
    assert len(series) == 10
    users = [sum(p.users) for p in series]
    assert users == sorted(users) and users[-1] == 3000
    assert [p.timestamp for p in series] == sorted(p.timestamp for p in series)
    assert series[-1].lift == readout(exposures, outcomes, AB).comparisons[0].lift
    fig = plot_cumulative_lift(series, str(tmp_path / "lift.png"), plan=plan_test(0.2, 0.3))
    assert (tmp_path / "lift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_lines()  # the lift line, zero line, planned sample
    with pytest.raises(ValueError):
        cumulative_lift(exposures, outcomes, AB, points=0)
