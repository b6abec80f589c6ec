"""A simulated online A/B test, end to end (issue 15, item 4): two model versions trained on the
synthetic marketplace, served side by side by one real TorchServe, simulated users requesting
through `seqrec_sdk.Client` with a GrowthBook-defined experiment, clicks from the generator's
ground truth, the SDK's fixed-horizon readout deciding; then A/A tests (one version in both arms).

    python -m bench.ab                       # make bench-ab -> bench/results/ab.json, ab.png, ab-aa.png
    python -m bench.ab --users 2000 --aa-repeats 20 --out /tmp/ab.json     # smaller

The two versions are stages of bench/ablation.py (bench/configs/ablation-synthetic.json: its base
config and its stage overrides, "2" = trained item vectors only, "all" = every stage), trained
once each on a marketplace of --users users. Simulated users, their click model and the stopping
rule: bench/ab_sim.py. The plan (plan_test) takes the control's *validation* HR@10 as its
baseline (known before the test) and --relative-mde; the test stops when both arms have their
planned users. The offline direction is measured in the same run on the same users (each export's
per-user test HR@10, paired bootstrap), next to the committed bench/results/ablation.json.

A/A: the treatment version in both arms. Repeat 0 is served live by TorchServe; every user's
answer from that version is also recorded once (requests pinned to the version), and the
--aa-repeats repeats re-run the SDK on them: a new experiment seed (new buckets), a new arrival
order, the Client's whole request path (experiment, exposures, recommendation ids) answered by a
replaying requests adapter that checks each request is byte-identical to the recorded one. The
replay of repeat 0 must give exactly the live repeat 0's readout.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import requests

from bench import ab_sim
from bench.ablation import boot_mean, paired_diff, run_stage
from bench.provenance import ROOT, git_commit, load_average
from devtools.local_server import LocalTorchServe, archive
from seqrec_sdk import Client, Experiment, GrowthBookSource, Outcome
from seqrec_sdk.analysis import wilson_interval
from seqrec_sdk.readout import Plan, Readout, format_readout, plan_test, readout
from seqrec_sdk.readout_plot import cumulative_lift, plot_cumulative_lift
from seqrec_sdk.records import JsonLinesWriter, ParquetWriter, read_jsonl, read_parquet
from train.catalog import rebuild
from train.config import TrainConfig
from train.pipeline import prepare

log = logging.getLogger("bench.ab")
ABLATION_CONFIG = ROOT / "bench/configs/ablation-synthetic.json"
# One worker per version (two versions on 2 cores), otherwise the shipped model YAML.
MODEL_YAML = re.sub(r"(?m)^(min|max)Workers: \d+$", r"\1Workers: 1",
                    (ROOT / "handler/model-config.yaml").read_text())


def train_version(base: TrainConfig, overrides: List[str], label: str, work: Path) -> Dict[str, Any]:
    """bench.ablation.run_stage (train, export, the scripted export's per-user test metrics), then
    the served export: the same model with every trained item on sale (train.catalog), since each
    request excludes what is not on sale at its own moment."""
    row, per_user, test = run_stage(base, overrides + [f"version={label}"], base.seed, work / "export")
    summary = json.loads((work / "export/train/summary.json").read_text())
    best = summary["history"][summary["best_epoch"] - 1]
    items = pd.read_parquet(work / "export/items.parquet").assign(available=True)
    record = rebuild(work / "export", items, work / "served", label)
    moved = float(np.abs(np.load(work / "served/item_vectors.npy") - np.load(work / "export/item_vectors.npy")).max())
    if moved > 1e-5:
        raise RuntimeError(f"{label}: the catalogue rebuild moved item vectors by {moved}")
    return {"label": label, "overrides": overrides, "per_user_HR@10": per_user["HR@10"],
            "valid_HR@10": best["valid_HR@10"], "served": work / "served",
            "record": {**row, "test_HR@10": test["model"]["HR@10"], "test_HR@10_ci95": test["model"]["HR@10_ci95"],
                       "popularity_test_HR@10": test["popularity"]["HR@10"], "valid_HR@10": best["valid_HR@10"],
                       "served_catalogue": {k: record[k] for k in ("available_items", "updated", "added")},
                       "catalogue_rebuild_max_vector_change": moved}}


def serve(versions: Sequence[Dict[str, Any]], work: Path) -> LocalTorchServe:
    """Both versions archived into one model store, one TorchServe (the first is the default)."""
    (work / "model.yaml").write_text(MODEL_YAML)
    for v in versions:
        archive(v["served"], work / "model_store", work / "model.yaml")
    models = [f"seqrec=seqrec_{v['label']}.mar" for v in versions]
    env = {"SEQREC_THREADS": os.environ.get("SEQREC_THREADS", "1")}
    return LocalTorchServe(work / "model_store", models, workdir=work / "server", env=env)


@dataclass
class Served:
    """One experiment's records and readout."""
    readout: Readout
    experiment: Experiment
    exposures: List[Dict[str, Any]]
    outcomes: List[Dict[str, Any]]


def live_test(ts: LocalTorchServe, users, order, plan, key: str, versions: Sequence[str],
              names: Sequence[str], seed: str, work: Path, recorder=None) -> Served:
    """One experiment served by TorchServe: exposures as JSON lines, clicks as Parquet, read back."""
    payload = ab_sim.write_payload(work, key, versions, names, seed)
    exposures, clicks = work / f"{key}-exposures.jsonl", work / f"{key}-outcomes.parquet"
    exposures.unlink(missing_ok=True)  # JsonLinesWriter appends
    with (recorder.session() if recorder is not None else requests.Session()) as session, \
            GrowthBookSource(path=payload, feature=ab_sim.FEATURE, refresh_s=None) as source, \
            JsonLinesWriter(exposures) as exposure_log, ParquetWriter(clicks, Outcome) as outcome_log, \
            Client(ts.base_url, token_file=str(ts.key_file), timeout=(2.0, 30.0), experiments=source,
                   on_exposure=exposure_log.write, session=session) as client:
        ab_sim.run_test(client, users, order, plan, names, outcome_log.write)
        exp = client.experiments[0]
    logged, clicked = list(read_jsonl(exposures)), read_parquet(clicks)
    return Served(readout(logged, clicked, exp, plan=plan), exp, logged, clicked)


def replayed_test(answers, users, order, plan, key: str, version: str, names: Sequence[str], seed: str,
                  work: Path) -> Readout:
    """The same experiment, the SDK answered from recorded TorchServe answers (records in memory)."""
    payload = ab_sim.write_payload(work, key, [version] * len(names), names, seed)
    exposures: List[Any] = []
    clicks: List[Outcome] = []
    with ab_sim.replay_session(answers) as session, \
            GrowthBookSource(path=payload, feature=ab_sim.FEATURE, refresh_s=None) as source, \
            Client(ab_sim.REPLAY_URL, experiments=source, on_exposure=exposures.append, retries=0,
                   session=session) as client:
        # One thread: the replay is CPU-bound Python, threads would only contend for the GIL.
        ab_sim.run_test(client, users, order, plan, names, clicks.append, workers=1)
        exp = client.experiments[0]
    return readout(exposures, clicks, exp, plan=plan)


def readout_record(r: Readout) -> Dict[str, Any]:
    c = r.comparisons[0]
    return {"decision": r.decision, "summary": r.summary,
            "arms": [{"variant": a.variant, "users": a.users, "clicked": a.converted, "ctr": a.rate,
                      "ctr_ci95": list(a.rate_ci), "exposures": a.exposures, "fallbacks": a.fallbacks}
                     for a in r.arms],
            "lift": {"relative": c.lift.lift, "ci95": list(c.lift.ci) if c.lift.ci else None,
                     "p_value": c.lift.p_value, "significant": c.significant},
            "srm": {"users": list(r.srm.users), "chi2": r.srm.chi2, "p_value": r.srm.p_value,
                    "mismatch": r.srm.mismatch},
            "users_in_several_arms": r.users_in_several_arms}


def same_readout(a: Readout, b: Readout) -> bool:
    return [(x.users, x.converted) for x in a.arms] == [(x.users, x.converted) for x in b.arms]


def served_hits(answers, users, version: str) -> np.ndarray:
    """Per user: 1 when the recorded list of `version` holds the user's next item."""
    return np.array([float(u.target in [i["item_id"] for i in json.loads(answers[(version, u.user_id)][2])["items"]])
                     for u in users])


def agreement(a, b) -> Dict[str, int]:
    """How many (version, user) answers recorded in a list the same items as b's answer."""
    def ids(body: bytes) -> List[Any]:
        return [i["item_id"] for i in json.loads(body)["items"]]
    same = sum(ids(body) == ids(b[key][2]) for key, (_, _, body) in a.items())
    return {"answers": len(a), "same_items": int(same)}


def ablation_direction(control: str, treatment: str) -> Dict[str, Any]:
    """The committed offline ablation's synthetic stage comparison (bench/results/ablation.json)."""
    path = ROOT / "bench/results/ablation.json"
    d = json.loads(path.read_text())["datasets"].get("synthetic", {}) if path.exists() else {}
    stages = d.get("stages", {})
    if control != "2" or treatment not in stages or "vs_stage_2" not in stages[treatment]:
        return {"available": False}
    diff = stages[treatment]["vs_stage_2"]["HR@10"]
    return {"available": True, "file": "bench/results/ablation.json", "commit": d.get("commit"),
            "seeds": d.get("seeds"), "test_users": stages[treatment]["test_users"],
            "HR@10": {control: stages[control]["model"]["HR@10"], treatment: stages[treatment]["model"]["HR@10"]},
            "diff_HR@10": diff, "direction": int(np.sign(diff["mean"]))}


def aa_share(decisions: Counter, repeats: int, alpha: float) -> Dict[str, Any]:
    none = decisions.get("no difference", 0)
    # P(at most `none` of `repeats` | each repeat finds nothing with probability 1 - alpha)
    tail = sum(math.comb(repeats, i) * (1 - alpha) ** i * alpha ** (repeats - i) for i in range(none + 1))
    return {"repeats": repeats, "decisions": dict(decisions), "no_difference": none,
            "share_no_difference": none / repeats, "share_ci95": list(wilson_interval(none, repeats, 0.95)),
            "issue_target": 0.95, "meets_issue_target": none / repeats >= 0.95,
            "expected_share_if_calibrated": 1 - alpha,
            "p_this_few_if_calibrated": tail}


def simulate(versions, users, plan: Plan, aa_plan: Plan, work: Path, seed: int, aa_repeats: int,
             ts: Optional[LocalTorchServe] = None) -> Dict[str, Any]:
    """On one TorchServe serving both versions (`ts`, else one started and stopped here): the A/B
    (live), every user's answer from each version (pinned, recorded), the live A/A repeat on the
    treatment version; then the replayed A/A repeats."""
    names, seconds = [v["label"] for v in versions], {}
    ab_answers, pinned = ab_sim.Recorder(), ab_sim.Recorder()
    clock = time.perf_counter()
    with (contextlib.nullcontext(ts) if ts is not None else serve(versions, work)) as ts:
        ts.wait_ready([f"/predictions/seqrec/{v}" for v in names])
        seconds["serve_start"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ab = live_test(ts, users, ab_sim.arrival_order(len(users), seed), plan, "ab",
                       names, names, f"ab-{seed}", work, ab_answers)
        seconds["ab_live"] = time.perf_counter() - clock
        clock = time.perf_counter()
        with pinned.session() as session, \
                Client(ts.base_url, token_file=str(ts.key_file), timeout=(2.0, 30.0), session=session) as c:
            for v in names:
                ab_sim.pinned_answers(c, users, v)
        seconds["record_both_versions"] = time.perf_counter() - clock
        clock = time.perf_counter()
        # Repeat 0 of the A/A, live: the replays below must reproduce it exactly.
        aa_live = live_test(ts, users, ab_sim.arrival_order(len(users), 1000 + seed), aa_plan, "aa-live",
                            [names[1]] * 2, ["a", "b"], f"aa-{seed}", work)
        seconds["aa_live"] = time.perf_counter() - clock
    clock = time.perf_counter()
    (work / "aa-replays").mkdir(exist_ok=True)
    replays = [replayed_test(pinned.answers, users, ab_sim.arrival_order(len(users), 1000 + seed + r),
                             aa_plan, f"aa-{r}", names[1], ["a", "b"], f"aa-{seed + r}", work / "aa-replays")
               for r in range(aa_repeats)]
    seconds["aa_replays"] = time.perf_counter() - clock

    return {"ab": ab, "aa_live": aa_live, "replays": replays, "ab_answers": ab_answers, "pinned": pinned,
            "seconds": seconds}


def report(args, base: TrainConfig, versions, users, ab: Served, aa_live: Served, replays: List[Readout],
           ab_answers, pinned) -> Dict[str, Any]:
    """ab.json's body: configs, sizes, training, offline and served comparisons, A/B, A/A.
    `args`: main's options (users, items, control, treatment, relative_mde, seed)."""
    names = [v["label"] for v in versions]
    hits = [served_hits(pinned.answers, users, v) for v in names]
    offline_diff = paired_diff(versions[1]["per_user_HR@10"], versions[0]["per_user_HR@10"], base.seed)
    r = ab.readout
    direction = int(np.sign(r.comparisons[0].lift.lift or 0)) if r.decision in ("winner", "loser") else 0
    decisions = Counter(x.decision for x in replays)
    return {
        "what": "simulated online A/B and A/A tests through seqrec_sdk.Client and one real TorchServe",
        "config": {"marketplace": {"users": args.users, "items": args.items, "seed": base.synthetic_seed},
                   "training_base": base.to_dict(), "ablation_config": str(ABLATION_CONFIG.relative_to(ROOT)),
                   "versions": {v["label"]: {"arm": arm, "overrides": v["overrides"]}
                                for arm, v in zip(("control", "treatment"), versions)},
                   "k": ab_sim.K, "relative_mde": args.relative_mde, "alpha": r.alpha, "power": r.plan.power,
                   "click_model": "a user clicks the served list when it holds the item the generator's log has "
                                  "as that user's next event (held out of training); at most one click a list",
                   "catalogue": "every trained item served; each request excludes the items not on sale at the "
                                "user's moment (now = the next event's time)",
                   "stopping": "after the chunk of 64 arrivals in which every arm reached its planned users",
                   "model_yaml": MODEL_YAML},
        "sizes": {"simulated_users": len(users), "ab_users": sum(a.users for a in r.arms),
                  "aa_live_users": sum(a.users for a in aa_live.readout.arms),
                  "recorded_answers": len(pinned.answers), "aa_repeats": len(replays)},
        "training": {v["label"]: v["record"] for v in versions},
        "offline": {"same_run": {"users": len(users), "direction": int(np.sign(offline_diff["mean"])),
                                 "HR@10": {v["label"]: boot_mean(v["per_user_HR@10"], base.seed) for v in versions},
                                 "diff_HR@10": {"of": f"{names[1]} - {names[0]}", **offline_diff}},
                    "ablation_json": ablation_direction(args.control, args.treatment)},
        "served_both_versions": {
            "what": "each simulated user's list from each version (requests pinned to it): the click rate if "
                    "everyone saw both, i.e. what the A/B estimates from half the users each. Above the offline "
                    "HR@10: a served list ranks only the items on sale at the user's moment, offline ranks all",
            "ctr": {v: boot_mean(h, base.seed) for v, h in zip(names, hits)},
            "diff_ctr": {"of": f"{names[1]} - {names[0]}", **paired_diff(hits[1], hits[0], base.seed)},
            "ab_answers_same_items_as_pinned": agreement(ab_answers.answers, pinned.answers)},
        "ab": {**readout_record(r), "plan": {"baseline": r.plan.baseline, "baseline_from": "the control's validation HR@10",
                                             "users_per_variant": list(r.plan.users_per_variant)},
               "direction": direction,
               "agrees_with_offline": direction != 0 and direction == int(np.sign(offline_diff["mean"]))},
        "aa": {"version": names[1],
               "plan": {"baseline": aa_live.readout.plan.baseline, "baseline_from": "its validation HR@10",
                        "users_per_variant": list(aa_live.readout.plan.users_per_variant)},
               "live_repeat": readout_record(aa_live.readout),
               "replay_of_live_matches": same_readout(replays[0], aa_live.readout) if replays else None,
               "reused": "each user's answer from the A/A version was requested once from TorchServe (pinned "
                         "requests) and replayed to the SDK in every repeat; per repeat the SDK buckets users anew "
                         "(a GrowthBook payload with a new seed), serves them in a new arrival order through "
                         "Client.recommend_many and logs its own exposures and recommendation ids; the clicks "
                         "follow from the replayed list by the click model",
               **aa_share(decisions, len(replays), r.alpha),
               "per_repeat": [{"seed": f"aa-{args.seed + i}", "decision": x.decision,
                               "users": [a.users for a in x.arms], "clicked": [a.converted for a in x.arms],
                               "lift": x.comparisons[0].lift.lift, "p_value": x.comparisons[0].lift.p_value}
                              for i, x in enumerate(replays)]},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=4000, help="synthetic marketplace users (= simulated users)")
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--control", default="2", help="ablation stage of the control version")
    ap.add_argument("--treatment", default="all", help="ablation stage of the treatment version")
    ap.add_argument("--set", nargs="*", default=[], help="more training overrides for both versions")
    ap.add_argument("--relative-mde", type=float, default=0.15, help="the plan's smallest lift worth finding")
    ap.add_argument("--aa-repeats", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="arrival orders and experiment seeds start here")
    ap.add_argument("--out", default=str(ROOT / "bench/results/ab.json"))
    ap.add_argument("--work", default=str(ROOT / "artifacts/bench-ab"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_all, seconds = time.perf_counter(), {}
    start = {"load_average": load_average(),
             "commit": git_commit(["bench", "train", "model", "handler", "sdk/seqrec_sdk", "devtools"])}
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)

    spec = json.loads(ABLATION_CONFIG.read_text())
    base = TrainConfig.from_dict(spec["base"]).override(
        [f"synthetic_users={args.users}", f"synthetic_items={args.items}", "num_threads=0", *args.set])
    stages = {"control": args.control, "treatment": args.treatment}
    clock = time.perf_counter()
    versions = [train_version(base, spec["stages"][stages[arm]], f"stage-{stages[arm]}", work / f"stage-{stages[arm]}")
                for arm in ("control", "treatment")]
    seconds["train"] = time.perf_counter() - clock
    names = [v["label"] for v in versions]

    users = ab_sim.simulated_users(prepare(base))
    plan = plan_test(baseline=versions[0]["valid_HR@10"], relative_mde=args.relative_mde)
    aa_plan = plan_test(baseline=versions[1]["valid_HR@10"], relative_mde=args.relative_mde)
    for p in (plan, aa_plan):
        if p.total_users > 0.95 * len(users):
            raise SystemExit(f"the plan needs {list(p.users_per_variant)} users per arm, the marketplace has "
                             f"{len(users)}: raise --users or --relative-mde")
    sim = simulate(versions, users, plan, aa_plan, work, args.seed, args.aa_repeats)
    seconds.update(sim.pop("seconds"))
    result = report(args, base, versions, users, **sim)
    ab, aa_live = sim["ab"], sim["aa_live"]
    result = {"commit": start["commit"], "command": "python -m bench.ab " + " ".join(sys.argv[1:] if argv is None else argv),
              "load_average": {"start": start["load_average"], "end": load_average()},
              "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "SEQREC_THREADS")}, **result,
              "wall_seconds": {**{k: round(v, 1) for k, v in seconds.items()},
                               "total": round(time.perf_counter() - t_all, 1)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for served, path, title in ((ab, out.with_suffix(".png"), f"A/B {names[1]} vs {names[0]}"),
                                (aa_live, out.with_name(out.stem + "-aa.png"), f"A/A {names[1]} vs itself (live)")):
        series = cumulative_lift(served.exposures, served.outcomes, served.experiment, points=30)
        plot_cumulative_lift(series, str(path), plan=served.readout.plan,
                             title=f"{title}: cumulative lift of the user click rate")
    print(format_readout(ab.readout))
    off, aa = result["offline"]["same_run"]["diff_HR@10"], result["aa"]
    print(f"offline, same users: HR@10 {names[1]} - {names[0]} = {off['mean']:+.4f} {off['ci95']}; A/B agrees: "
          f"{result['ab']['agrees_with_offline']}; A/A: {aa['no_difference']}/{aa['repeats']} no difference "
          f"(live repeat: {aa_live.readout.decision}, replay matches: {aa['replay_of_live_matches']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
