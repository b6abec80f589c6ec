"""Hyperparameter search for the LSTM recipe on validation only (optuna's TPE sampler, median
pruning on the per-epoch validation NDCG@10).

    python -m bench.search --config bench/configs/quality-amazon-beauty.json --trials 20
    python -m bench.search --config ... --trials 10      # again: the study goes on where it stopped

Each trial trains the config with its suggested values exactly as the first fit of
`python -m train` does (all events but each user's last two, early stopping on the validation
sample's NDCG@10) and is scored by its best validation NDCG@10. Test cases are never encoded,
scored or read here: the test figure of a chosen recipe comes from bench/quality.py afterwards.
A new study's first trial is the recipe as given. With --seeds N a trial is trained N times
(training seeds: initial weights, batches, negatives) and scored by the mean; the validation users
are the same for every seed and trial (drawn with the recipe's seed), so configs are compared on
one sample and a one-seed difference below the seed-to-seed spread is not taken for a gain.
The study lives in an SQLite file under artifacts/search/ (resumable across sessions); every
trial, pruned ones included, is written to bench/results/search-<data>.json with the commit and
load average, and the best trial's full config to --best-config if given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna
import torch

from bench.provenance import git_commit, load_average
from train.config import TrainConfig, load_config, parse_value
from train.evaluate import evaluate_ranking, model_scorer, summarize
from train.negatives import CandidateSampler
from train.pipeline import Prepared, build_model, prepare
from train.sequences import SequentialDataset, encode_cases, seen_items
from train.threads import resolve_threads
from train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
METRIC = "NDCG@10"


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The search space: the levers issue 13 names that a config holds (negatives, learning rate and
    its reduce-on-plateau decay, batch, capacity, the LSTM's gate biases, the last item's skip
    connection, an attention read-out, a per-position temperature, dropout (of coordinates, and of
    whole input events), the initial temperature |w| and whether it is learned, a per-item logit
    bias, uniform or popularity negatives with logQ, and which logQ, or the full softmax over every
    item), and whether item vectors start from the co-occurrence SVD (and its window)."""
    # Every trial draws every parameter (so a trial's params always hold the same keys), but some
    # only take effect where their configs allow it: a per-item bias only without the per-position
    # temperature, a choice of logQ only for popularity negatives with logq, and popularity
    # negatives not with the full softmax (sample_size 0 samples nothing: it runs as "uniform").
    position_temperature = trial.suggest_categorical("model.position_temperature", [False, True])
    item_bias = trial.suggest_categorical("model.item_bias", [False, True]) and not position_temperature
    # 16,384 added after study 2 and 0 (every item) after study 20: optuna refuses changed
    # choices in a stored study, so those studies' SQLite files cannot be resumed.
    sample_size = trial.suggest_categorical("sample_size", [0, 1024, 2048, 4096, 8192, 16384])
    negatives = trial.suggest_categorical("negatives", ["uniform", "popularity"])
    if sample_size == 0:
        negatives = "uniform"
    logq_correction = trial.suggest_categorical("logq_correction", ["draw", "inclusion"])
    if not (negatives == "popularity" and base.logq):
        logq_correction = "draw"
    # A file of vectors (pretrained=PATH) is the data's, not a lever: it stays as given.
    pretrained = trial.suggest_categorical("pretrained", ["none", "svd"])
    if base.pretrained not in ("none", "svd"):
        pretrained = base.pretrained
    model = dataclasses.replace(
        base.model,
        embedding_dim=trial.suggest_categorical("model.embedding_dim", [64, 128, 256]),
        hidden_dim=trial.suggest_categorical("model.hidden_dim", [64, 128, 256]),
        num_layers=trial.suggest_int("model.num_layers", 1, 2),
        lstm_bias=trial.suggest_categorical("model.lstm_bias", [False, True]),
        residual=trial.suggest_categorical("model.residual", [False, True]),
        attention=trial.suggest_categorical("model.attention", [False, True]),
        position_temperature=position_temperature,
        dropout=trial.suggest_float("model.dropout", 0.0, 0.6),
        item_input_dropout=trial.suggest_float("model.item_input_dropout", 0.0, 0.5),
        init_scale=trial.suggest_float("model.init_scale", 5.0, 40.0, log=True),
        learn_temperature=trial.suggest_categorical("model.learn_temperature", [True, False]),
        item_bias=item_bias,
    )
    return dataclasses.replace(
        base, model=model,
        lr=trial.suggest_float("lr", 2e-4, 5e-3, log=True),
        lr_decay=trial.suggest_categorical("lr_decay", [1.0, 0.5, 0.3]),
        batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
        sample_size=sample_size, negatives=negatives, logq_correction=logq_correction,
        pretrained=pretrained, svd_window=trial.suggest_int("svd_window", 1, 10),
    )


def base_params(cfg: TrainConfig) -> Dict[str, Any]:
    """The recipe's own values of the searched parameters (the first trial of a new study)."""
    return {"model.embedding_dim": cfg.model.embedding_dim, "model.init_scale": cfg.model.init_scale,
            "model.hidden_dim": cfg.model.hidden_dim, "model.num_layers": cfg.model.num_layers,
            "model.lstm_bias": cfg.model.lstm_bias, "model.residual": cfg.model.residual,
            "model.attention": cfg.model.attention, "model.position_temperature": cfg.model.position_temperature,
            "model.learn_temperature": cfg.model.learn_temperature, "model.item_bias": cfg.model.item_bias,
            "model.dropout": cfg.model.dropout, "model.item_input_dropout": cfg.model.item_input_dropout,
            "lr": cfg.lr, "lr_decay": cfg.lr_decay, "batch_size": cfg.batch_size,
            "sample_size": cfg.sample_size, "negatives": cfg.negatives,
            "logq_correction": cfg.logq_correction,
            "pretrained": cfg.pretrained if cfg.pretrained in ("none", "svd") else "none",
            "svd_window": cfg.svd_window}


def train_on_validation(cfg: TrainConfig, prep: Prepared, report: Callable[[int, float], None],
                        valid_seed: Optional[int] = None) -> Dict[str, Any]:
    """The first fit of train.pipeline.run, without its test evaluation and export: the best
    validation figures and the epochs. `report(epoch, ndcg)` after each validation (it may raise
    optuna.TrialPruned). The validation sample is drawn with valid_seed (default: cfg.seed, as
    train.pipeline.run draws it)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, prep)
    data = SequentialDataset(model, prep.cols, prep.split.train)
    sampler = CandidateSampler.from_config(cfg, len(prep.index), torch.as_tensor(prep.popularity))
    valid = prep.split.valid.subset(cfg.max_eval_users, cfg.seed if valid_seed is None else valid_seed)
    inputs, targets = encode_cases(model, prep.cols, valid), torch.as_tensor(valid.targets)
    seen_valid = seen_items(prep.cols, valid)
    seen = []

    def validate(m) -> Dict[str, float]:
        with torch.no_grad():
            out = summarize(evaluate_ranking(model_scorer(m), *inputs, targets, cfg.exclude_seen, seen=seen_valid))
        seen.append(out[METRIC])
        report(len(seen), out[METRIC])
        return out

    hist = fit(model, data, cfg, sampler, validate, None)
    return {"valid_" + METRIC: max(seen), "best_epoch": hist.best_epoch, "epochs": len(hist.epochs),
            "train_seconds": round(hist.train_seconds, 1), "valid_curve": [round(x, 5) for x in seen]}


def seed_mean(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A trial trained with several seeds: the mean best validation figure, its spread, and each
    seed's own row."""
    best = [r["valid_" + METRIC] for r in runs]
    return {"valid_" + METRIC: statistics.fmean(best), "valid_" + METRIC + "_seed_std": statistics.stdev(best),
            "train_seconds": round(sum(r["train_seconds"] for r in runs), 1), "per_seed": runs}


def _parse_picked(spec: str) -> Dict[str, Any]:
    """'model.dropout=0.5,sample_size=8192' -> {"model.dropout": 0.5, "sample_size": 8192}."""
    out: Dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise SystemExit(f"--enqueue: expected KEY=VALUE[,KEY=VALUE], got {spec!r}")
        out[key.strip()] = parse_value(value)
    return out


def record(trial: optuna.trial.FrozenTrial) -> Dict[str, Any]:
    out = {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
           **trial.user_attrs}
    if trial.state != optuna.trial.TrialState.COMPLETE:  # pruned, or stopped by hand: what it measured
        out["reported_valid_curve"] = [round(trial.intermediate_values[k], 5) for k in sorted(trial.intermediate_values)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the base recipe (e.g. bench/configs/quality-amazon-beauty.json)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the base recipe")
    ap.add_argument("--trials", type=int, default=20,
                    help="trials to run now (added to the study's); 0 rewrites the results JSON from the "
                         "stored study, e.g. after a trial was stopped by hand")
    ap.add_argument("--study", help="study name (default search-<data>)")
    ap.add_argument("--storage", help="optuna storage URL (default sqlite under artifacts/search/)")
    ap.add_argument("--out", type=Path, help="trials JSON (default bench/results/<study>.json)")
    ap.add_argument("--enqueue", nargs="*", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="hand-picked trials to run before the sampler's: each the recipe with these "
                         "searched values changed (e.g. model.dropout=0.5,sample_size=8192)")
    ap.add_argument("--best-config", type=Path, help="write the best trial's whole config here")
    ap.add_argument("--seeds", type=int, default=1,
                    help="training seeds a trial (the recipe's seed, +1, ...): scored by the mean")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds: at least 1")
    if args.trials < 0:
        ap.error("--trials: at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    picked = [(spec, _parse_picked(spec)) for spec in args.enqueue]  # a typo fails before any work
    recipe = load_config(args.config, args.set)
    # The search scores the first fit; a refit (bench/quality.py's second row) is not trained here.
    base = dataclasses.replace(recipe, refit_on_validation=False)
    name = args.study or f"search-{Path(base.data).name}"
    storage = args.storage
    if storage is None:
        (ROOT / "artifacts" / "search").mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{ROOT / 'artifacts' / 'search' / (name + '.db')}"
    out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    torch.set_num_threads(resolve_threads(base.num_threads))
    started = {"commit": git_commit(["train", "model", "bench/search.py"]), "load_average": load_average(),
               "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    prep = prepare(base)  # once: every trial trains on the same split and validation sample
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=base.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3))

    if not study.trials:  # a new study starts from the recipe as committed: its best is never worse
        study.enqueue_trial(base_params(base), user_attrs={"picked": "the recipe"})
    for spec, values in picked:
        study.enqueue_trial({**base_params(base), **values}, user_attrs={"picked": spec})

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, base)
        trial.set_user_attr("commit", started["commit"])
        # Per trial: a study resumed with another --seeds mixes one-seed and mean-of-seeds scores.
        trial.set_user_attr("training_seeds", [base.seed + i for i in range(args.seeds)])

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            # Hand-picked trials run to the end: a slower start (more dropout) is not a worse finish.
            if "picked" not in trial.user_attrs and trial.should_prune():
                raise optuna.TrialPruned()

        t0 = time.perf_counter()
        runs: List[Dict[str, Any]] = []
        try:
            for i in range(args.seeds):  # pruning looks at the first seed's curve only
                seeded = dataclasses.replace(cfg, seed=base.seed + i)
                runs.append({"seed": seeded.seed, **train_on_validation(
                    seeded, prep, report if i == 0 else lambda *_: None, valid_seed=base.seed)})
        finally:
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - t0, 1))
        for k, v in (runs[0] if args.seeds == 1 else seed_mean(runs)).items():
            trial.set_user_attr(k, v)
        return trial.user_attrs["valid_" + METRIC]

    def write(*_) -> None:  # after every trial: a search stopped midway keeps what it measured
        trials = [record(t) for t in study.trials]
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_trial if done else None
        result = {"benchmark": "search", "study": name, "base_config": args.config, "overrides": args.set,
                  "objective": f"best validation {METRIC} of the early-stopped first fit (test never evaluated); "
                               "the mean over a trial's training_seeds when it has several",
                  "validation_sample_seed": base.seed,
                  "sampler": "TPE (seed = config seed); a new study's first trial is the recipe as given, then the --enqueue trials (user attr 'picked')",
                  "pruner": "median, after 3 trials and 3 validations",
                  "this_run": {**started, "load_average_now": load_average(), "trials_asked": args.trials,
                               "training_seeds": [base.seed + i for i in range(args.seeds)]},
                  "best": record(best) if best else None, "trials": trials}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if best is not None and args.best_config:
            # The recipe's value for a parameter the space gained after the best trial ran.
            cfg = suggest(optuna.trial.FixedTrial({**base_params(recipe), **best.params}), recipe).to_dict()
            args.best_config.write_text(json.dumps(cfg, indent=2) + "\n")

    study.optimize(objective, n_trials=args.trials, callbacks=[write])
    write()
    trials = study.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if done else None
    print(f"{len(trials)} trials ({len(done)} complete) in {name}; best validation {METRIC} "
          f"{best.value if best else float('nan'):.4f} with {best.params if best else {}} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
