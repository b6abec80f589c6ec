"""The readout of an A/B test between model versions: a fixed-horizon test, planned up front.

    from seqrec_sdk.readout import plan_test, readout, format_readout
    plan = plan_test(baseline=0.20, relative_mde=0.05, weights=ranker_test.weights)
    print(plan.users_per_variant)              # users each arm needs before any decision
    result = readout(exposures, outcomes, ranker_test, plan=plan)
    print(format_readout(result))

The unit is the user, since users are what is randomized: a user converts when they clicked
(``kind="click"``) or converted (``kind="convert"``) on an item of a list shown to them in the
test; the metric is the share of an arm's users who converted (the "user hit rate").
Users seen in more than one arm (weights edited mid-test, a bug) are counted and left out.

Why fixed-horizon and not a sequential test: its p-value and interval are the textbook ones,
the same as GrowthBook's frequentist engine shows, and the planned sample size tells a team how
long the test runs before it starts. Peeking is handled by refusing to decide: until every arm
has its planned users the decision is "collecting" whatever the interim p-value says, so looking
daily cannot inflate the false-positive rate. The price: a large effect is not stopped early
(an always-valid sequential test could, with wider intervals at every sample size).

Also checked: sample-ratio mismatch (chi-square of users per arm against the configured weights,
flagged below p = 0.001 as GrowthBook does); a mismatch overrides every other verdict.
With more than one treatment, alpha is split between them (Bonferroni).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple, Union

from .analysis import wilson_interval
from .experiments import Experiment
from .models import Exposure, Outcome
from .stats import Lift, relative_lift, sample_size, srm_test

__all__ = ["Plan", "plan_test", "Arm", "Comparison", "SrmCheck", "Readout", "readout",
           "format_readout", "user_outcomes"]

SRM_THRESHOLD = 0.001
ExposureLike = Union[Exposure, Mapping[str, Any]]
OutcomeLike = Union[Outcome, Tuple[str, Any], Mapping[str, Any]]


@dataclass(frozen=True)
class Plan:
    """A test planned before it starts: ``users_per_variant`` in the arms' order."""

    baseline: float
    relative_mde: float
    alpha: float
    power: float
    weights: Tuple[float, ...]
    users_per_variant: Tuple[int, ...]

    @property
    def total_users(self) -> int:
        return sum(self.users_per_variant)


def plan_test(baseline: float, relative_mde: float, *, weights: Sequence[float] = (0.5, 0.5),
              alpha: float = 0.05, power: float = 0.8) -> Plan:
    """Users needed to detect a relative lift of ``relative_mde`` on a user hit rate of
    ``baseline`` (the control's), first weight = control's; alpha split over the treatments."""
    weights = tuple(float(w) for w in weights)
    per_test_alpha = alpha / (len(weights) - 1) if len(weights) > 1 else alpha
    total = sample_size(baseline, relative_mde, weights, per_test_alpha, power)
    wsum = sum(weights)
    per_arm = tuple(math.ceil(total * w / wsum) for w in weights)
    return Plan(baseline, relative_mde, alpha, power, weights, per_arm)


@dataclass(frozen=True)
class Arm:
    variant: str
    variation_id: Optional[str]
    users: int
    converted: int
    rate: float
    rate_ci: Tuple[float, float]  # Wilson, at the readout's per-comparison confidence
    exposures: int
    fallbacks: int  # exposures that were the client's fallback list (kept: intent-to-treat)


@dataclass(frozen=True)
class Comparison:
    variant: str
    control: str
    lift: Lift  # relative lift of the user hit rate, Katz interval, Wald p-value
    significant: bool


@dataclass(frozen=True)
class SrmCheck:
    users: Tuple[int, ...]
    expected_shares: Tuple[float, ...]
    chi2: float
    df: int
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_THRESHOLD


@dataclass(frozen=True)
class Readout:
    experiment_key: str
    arms: Tuple[Arm, ...]  # control first
    comparisons: Tuple[Comparison, ...]
    srm: SrmCheck
    plan: Optional[Plan]
    alpha: float
    users_in_several_arms: int
    decision: str  # "srm", "no plan", "collecting", "winner", "loser", "no difference"
    summary: str  # one sentence for a person


def _exposure(e: ExposureLike) -> Exposure:
    return e if isinstance(e, Exposure) else Exposure.from_dict(e)


def _outcome(o: OutcomeLike) -> Tuple[str, str, str]:
    if isinstance(o, Outcome):
        return o.recommendation_id, str(o.item_id), o.kind
    if isinstance(o, Mapping):
        return str(o["recommendation_id"]), str(o["item_id"]), str(o.get("kind", "click"))
    rec_id, item_id = o
    return str(rec_id), str(item_id), "click"


def user_outcomes(exposures: Iterable[ExposureLike], outcomes: Iterable[OutcomeLike],
                  experiment_key: str, *, kind: str = "click", include_fallbacks: bool = True
                  ) -> Tuple[Dict[str, str], Set[str], Dict[str, Exposure], int]:
    """(user -> variant, users converted, first exposure per user, users in several arms);
    what :func:`readout` and :func:`~seqrec_sdk.readout_plot.cumulative_lift` count."""
    arm_of: Dict[str, str] = {}
    several: Set[str] = set()
    first: Dict[str, Exposure] = {}
    shown: Dict[str, Tuple[str, Set[str]]] = {}
    for raw in exposures:
        e = _exposure(raw)
        if e.experiment_key != experiment_key or (e.fallback and not include_fallbacks):
            continue
        if arm_of.setdefault(e.user_id, e.variant) != e.variant:
            several.add(e.user_id)
        if e.user_id not in first or e.timestamp < first[e.user_id].timestamp:
            first[e.user_id] = e
        shown[e.recommendation_id] = (e.user_id, {str(i) for i in e.item_ids})
    converted: Set[str] = set()
    for raw in outcomes:
        rec_id, item_id, what = _outcome(raw)
        entry = shown.get(rec_id)
        if what == kind and entry is not None and item_id in entry[1]:
            converted.add(entry[0])
    for user in several:
        arm_of.pop(user)
        first.pop(user)
    return arm_of, converted - several, first, len(several)


def readout(
    exposures: Iterable[ExposureLike],
    outcomes: Iterable[OutcomeLike],
    experiment: Experiment,
    *,
    plan: Optional[Plan] = None,
    alpha: Optional[float] = None,
    kind: str = "click",
    include_fallbacks: bool = True,
) -> Readout:
    """Read ``experiment`` (its first variant is the control) from exposure and outcome
    records (objects, their dicts, or (recommendation_id, item_id) click pairs).
    ``alpha`` defaults to the plan's, else 0.05."""
    alpha = alpha if alpha is not None else (plan.alpha if plan else 0.05)
    exposures = [_exposure(e) for e in exposures]
    arm_of, converted, _, several = user_outcomes(
        exposures, outcomes, experiment.key, kind=kind, include_fallbacks=include_fallbacks)
    per_alpha = alpha / max(1, len(experiment.variants) - 1)
    confidence = 1 - per_alpha
    lists: Counter = Counter()
    fallbacks: Counter = Counter()
    for e in exposures:
        if e.experiment_key == experiment.key and e.user_id in arm_of:
            if e.fallback and not include_fallbacks:
                continue
            lists[e.variant] += 1
            fallbacks[e.variant] += e.fallback
    arms = []
    for v in experiment.variants:
        users = [u for u, name in arm_of.items() if name == v.name]
        conv = sum(1 for u in users if u in converted)
        arms.append(Arm(v.name, experiment.variation_id(v), len(users), conv,
                        conv / len(users) if users else 0.0,
                        wilson_interval(conv, len(users), confidence),
                        lists[v.name], fallbacks[v.name]))
    control = arms[0]
    comparisons = []
    for arm in arms[1:]:
        lift = relative_lift(control.converted, control.users, arm.converted, arm.users,
                             confidence)
        comparisons.append(Comparison(arm.variant, control.variant, lift,
                                      lift.p_value is not None and lift.p_value < per_alpha))
    stat, df, p = srm_test([a.users for a in arms], experiment.weights)
    wsum = sum(experiment.weights)
    srm = SrmCheck(tuple(a.users for a in arms), tuple(w / wsum for w in experiment.weights),
                   stat, df, p)
    decision, summary = _decide(arms, comparisons, srm, plan)
    return Readout(experiment.key, tuple(arms), tuple(comparisons), srm, plan, alpha, several,
                   decision, summary)


def _decide(arms: Sequence[Arm], comparisons: Sequence[Comparison], srm: SrmCheck,
            plan: Optional[Plan]) -> Tuple[str, str]:
    if srm.mismatch:
        return "srm", (f"sample-ratio mismatch (users {list(srm.users)}, chi2 {srm.chi2:.1f}, "
                       f"p = {srm.p_value:.2g}): assignment or logging is broken; trust nothing")
    if plan is None:
        return "no plan", "no planned sample size (plan_test): estimates only, no decision"
    if len(plan.users_per_variant) != len(arms):
        raise ValueError(f"the plan has {len(plan.users_per_variant)} arms, "
                         f"the experiment {len(arms)}")
    short = [(a.variant, a.users, need) for a, need in zip(arms, plan.users_per_variant)
             if a.users < need]
    if short:
        have, need = sum(a.users for a in arms), plan.total_users
        return "collecting", (f"collecting: {have} of {need} planned users; no decision before "
                              f"every arm has its planned sample")
    winners = [c for c in comparisons if c.significant and (c.lift.lift or 0) > 0]
    losers = [c for c in comparisons if c.significant and (c.lift.lift or 0) < 0]
    if winners:
        best = max(winners, key=lambda c: c.lift.lift or 0)
        return "winner", f"{best.variant} beats {best.control}: {_lift_text(best.lift)}"
    if losers:
        worst = min(losers, key=lambda c: c.lift.lift or 0)
        return "loser", f"{worst.variant} is worse than {worst.control}: {_lift_text(worst.lift)}"
    return "no difference", (f"no difference detected at the planned sample (the test could see "
                             f"a {plan.relative_mde:+.1%} lift with power {plan.power:.0%})")


def _lift_text(lift: Lift) -> str:
    if lift.lift is None or lift.ci is None:
        return "lift n/a (an arm has no conversions)"
    return (f"lift {lift.lift:+.2%} [{lift.ci[0]:+.2%}, {lift.ci[1]:+.2%}] "
            f"({lift.confidence:.0%} CI), p = {lift.p_value:.3g}")


def format_readout(r: Readout) -> str:
    """A plain-text readout for a terminal or a ticket."""
    lines = [f"experiment {r.experiment_key}: {r.summary}",
             f"{'variant':<14} {'users':>8} {'converted':>9} {'rate':>7}  {'CI':<17} "
             f"{'exposures':>9} {'fallbacks':>9}"]
    for a in r.arms:
        lines.append(f"{a.variant:<14.14} {a.users:>8} {a.converted:>9} {a.rate:>7.4f}  "
                     f"[{a.rate_ci[0]:.4f}, {a.rate_ci[1]:.4f}] {a.exposures:>9} {a.fallbacks:>9}")
    for c in r.comparisons:
        lines.append(f"{c.variant} vs {c.control}: {_lift_text(c.lift)}")
    shares = ", ".join(f"{s:.3f}" for s in r.srm.expected_shares)
    lines.append(f"sample ratio: users {list(r.srm.users)} vs weights [{shares}]: "
                 f"chi2 {r.srm.chi2:.2f} (df {r.srm.df}), p = {r.srm.p_value:.3g}"
                 f"{'  MISMATCH' if r.srm.mismatch else ''}")
    if r.plan is not None:
        lines.append(f"plan: {list(r.plan.users_per_variant)} users for a {r.plan.relative_mde:+.1%}"
                     f" lift on {r.plan.baseline:.2%}, alpha {r.plan.alpha}, power {r.plan.power}")
    if r.users_in_several_arms:
        lines.append(f"left out: {r.users_in_several_arms} users seen in more than one arm")
    return "\n".join(lines)
