"""Stage ablation (FINN.no's stages): 1 fixed item vectors, 2 trained with sampled negatives, then
2 + time, 2 + content, 2 + event context (type, source, strength: what the data has), and all of
them, per dataset.

    python bench/ablation.py                          # every bench/configs/ablation-*.json
    python bench/ablation.py --only synthetic --stages 2 2+time --seeds 1

Each config holds a `base` TrainConfig (chosen on validation, never on test), `stages` (name ->
overrides, as for `python -m train --set`), `seeds` (training seeds; the data and split stay
fixed) and optionally `cold_start` (a stage trained once more with a fraction of the items held
out, see train/coldstart.py). Every stage of a dataset is tested on the same users. A stage's
HR@10 / NDCG@10 is the mean over its seeds, with a 95% bootstrap interval over test users of each
user's seed-averaged metric; its difference to stage 2 gets a paired bootstrap interval (same
resampled users for both), and the count of seeds where it beat stage 2 trained with the same seed.
The stopping rule is epochs and validation patience, never wall time, so a busy machine changes
the timings but not the figures.
Results: bench/results/ablation.json (with the git commit) and bench/results/ablation.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from bench.provenance import git_commit
from train.config import TrainConfig
from train.datasets import data_dir
from train.evaluate import evaluate_ranking, model_scorer
from train.pipeline import prepare, run
from train.sequences import encode_cases, seen_items

log = logging.getLogger("ablation")
METRICS = ("HR@10", "NDCG@10")
REFERENCE = "2"  # differences are reported against this stage
REQUEST = "ablation_request.json"  # beside a finished run: the config it was asked to train (--reuse)
ORDER = ["ml-latest-small", "synthetic", "amazon-beauty"]  # chart and table order


def per_user_test(cfg: TrainConfig, export_dir: Path) -> Dict[str, np.ndarray]:
    """Per test user metrics of the exported (scripted) model: what serving would rank."""
    model = torch.jit.load(str(export_dir / "model.pt"))
    prep = prepare(cfg)
    items, feats, lengths = encode_cases(model, prep.cols, prep.split.test)
    with torch.no_grad():
        return evaluate_ranking(model_scorer(model), items, feats, lengths,
                                torch.as_tensor(prep.split.test.targets), cfg.exclude_seen,
                                seen=seen_items(prep.cols, prep.split.test))


def boot_mean(x: np.ndarray, seed: int, n_boot: int = 1000) -> Dict[str, Any]:
    """mean(x) with a 95% bootstrap interval over users (x: one value per test user)."""
    boots = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return {"mean": float(x.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}


def paired_diff(a: np.ndarray, b: np.ndarray, seed: int) -> Dict[str, Any]:
    """mean(a - b) with a 95% paired bootstrap interval over users (same resampled users for both)."""
    return boot_mean(a - b, seed)


def run_stage(base: TrainConfig, overrides: List[str], seed: int, out: Path, reuse: bool = False):
    """One training run of a stage: (summary row, per-user test metrics of its scripted export).
    With reuse, a finished run in `out` with exactly this config is read back instead of retrained
    (an interrupted ablation goes on where it stopped; a changed config always retrains)."""
    cfg = base.override(overrides + [f"seed={seed}"])
    t0 = time.perf_counter()
    s = finished_run(cfg, out) if reuse else None
    reused = s is not None
    if s is None:
        request = _jsonable(cfg.to_dict())  # before run(): it fills cfg.model in from the data
        (out / REQUEST).unlink(missing_ok=True)
        s = run(cfg, out, resume=False)
        (out / REQUEST).write_text(json.dumps(request, indent=2))
    per_user = per_user_test(TrainConfig.from_dict(s["config"]), out)
    test = s["test"]
    row = {"seed": seed, **{k: test["model"][k] for k in METRICS},
           "scripted_export_matches": bool(all(abs(per_user[k].mean() - test["model"][k]) < 1e-6 for k in METRICS)),
           "epochs": s["epochs"], "best_epoch": s["fits"][0]["best_epoch"],
           "best_valid_NDCG@10": s["fits"][0]["best_valid_NDCG@10"],
           "seconds_to_best": round(s["fits"][0]["seconds_to_best"], 1),
           "train_seconds": round(s["train_seconds"], 1),
           "wall_seconds": round(s["wall_seconds"] if reused else time.perf_counter() - t0, 1)}
    if reused:
        row["reused"] = True
    log.info("seed %d: HR@10 %.4f NDCG@10 %.4f (%d epochs, %.0f s)", seed, row["HR@10"], row["NDCG@10"],
             s["epochs"], s["train_seconds"])
    return row, per_user, test


def finished_run(cfg: TrainConfig, out: Path) -> Optional[Dict[str, Any]]:
    """The summary of a completed run in `out` trained with exactly `cfg`, else None. The request is
    compared (REQUEST, written once the run finished), not summary's config: training fills in what
    it learns from the data (item count, vocabularies)."""
    summary, request = out / "train" / "summary.json", out / REQUEST
    if not (summary.exists() and request.exists()):
        return None
    if json.loads(request.read_text()) != _jsonable(cfg.to_dict()):
        return None
    return json.loads(summary.read_text())


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def run_dataset(spec: Dict[str, Any], name: str, stages: List[str], artifacts: Path,
                n_seeds: int = 0, reuse: bool = False) -> Dict[str, Any]:
    """Every stage trained once per seed (spec "seeds", or the first n_seeds of 0, 1, ...). A stage's
    figure is the mean over seeds; its interval is a bootstrap over test users of each user's
    seed-averaged metric (training noise is in the per-seed rows and their spread)."""
    base = TrainConfig.from_dict(spec["base"])
    seeds = list(range(n_seeds)) if n_seeds else list(spec.get("seeds", [base.seed]))
    rows, per_user, per_seed_user = {}, {}, {}
    for stage, overrides in spec["stages"].items():
        if stages and stage not in stages:
            continue
        runs = [run_stage(base, overrides, seed, artifacts / name / stage.replace("+", "_") / f"seed{seed}", reuse)
                for seed in seeds]
        per_seed_user[stage] = [u for _, u, _ in runs]
        per_user[stage] = {k: np.mean([u[k] for u in per_seed_user[stage]], axis=0) for k in METRICS}
        test = runs[0][2]
        per_seed = [r for r, _, _ in runs]
        rows[stage] = {
            "overrides": overrides,
            "seeds": seeds,
            "model": {k: float(per_user[stage][k].mean()) for k in METRICS},
            "model_ci95": {k: boot_mean(per_user[stage][k], base.seed)["ci95"] for k in METRICS},
            "seed_std": {k: float(np.std([r[k] for r in per_seed], ddof=1)) if len(seeds) > 1 else None
                         for k in METRICS},
            "popularity": {k: test["popularity"][k] for k in METRICS},
            "scripted_export_matches": all(r["scripted_export_matches"] for r in per_seed),
            "test_users": test["model"]["users"],
            "per_seed": per_seed,
        }
        log.info("%s %s: HR@10 %.4f NDCG@10 %.4f (mean of %d seeds)", name, stage, rows[stage]["model"]["HR@10"],
                 rows[stage]["model"]["NDCG@10"], len(seeds))
    if REFERENCE in per_user:
        for stage in rows:
            if stage != REFERENCE:
                rows[stage]["vs_stage_2"] = {k: paired_diff(per_user[stage][k], per_user[REFERENCE][k], base.seed)
                                             for k in METRICS}
                # The same seed's stage-2 run: how often the stage wins, seed by seed.
                rows[stage]["seeds_better_than_stage_2"] = {
                    k: int(sum(a[k].mean() > b[k].mean()
                               for a, b in zip(per_seed_user[stage], per_seed_user[REFERENCE])))
                    for k in METRICS}
    result: Dict[str, Any] = {"config": spec["base"], "seeds": seeds, "stages": rows}
    cold = spec.get("cold_start")
    if cold and (not stages or cold["stage"] in stages):
        cfg = base.override(spec["stages"][cold["stage"]] + [f"cold_start_items={cold['fraction']}"])
        t0 = time.perf_counter()
        s = run(cfg, artifacts / name / "cold_start", resume=False)
        result["cold_start"] = {"stage": cold["stage"], "fraction": cold["fraction"], "seed": base.seed,
                                "wall_seconds": round(time.perf_counter() - t0, 1), **s["cold_start"]}
    return result


def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = results[name]["stages"]
        stages = list(rows)
        hr = [rows[s]["model"]["HR@10"] for s in stages]
        lo = [h - rows[s]["model_ci95"]["HR@10"][0] for h, s in zip(hr, stages)]
        hi = [rows[s]["model_ci95"]["HR@10"][1] - h for h, s in zip(hr, stages)]
        colors = ["tab:gray" if s == "1" else "tab:blue" if s == REFERENCE else "tab:green" if s == "all"
                  else "tab:orange" for s in stages]
        ax.bar(range(len(stages)), hr, yerr=[lo, hi], capsize=4, color=colors)
        for x, s in enumerate(stages):  # each training seed's own figure
            seed_hr = [r["HR@10"] for r in rows[s].get("per_seed", [])]
            ax.scatter([x] * len(seed_hr), seed_hr, s=9, color="black", zorder=3)
        for x, h in enumerate(hr):
            ax.text(x, h / 2, f"{h:.3f}", ha="center", va="center", rotation=90, color="white", fontsize=8)
        pop = rows[stages[0]]["popularity"]["HR@10"]
        ax.axhline(pop, color="black", ls="--", lw=1, label=f"popularity {pop:.3f}")
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages, rotation=30)
        ax.set_title(f"{name} ({rows[stages[0]]['test_users']} test users)")
        ax.set_ylabel("HR@10: mean of seeds (dots), 95% bootstrap CI")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("seqrec stage ablation: hit rate @10 per configuration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(ROOT / "bench/configs"), help="folder of ablation-*.json")
    ap.add_argument("--only", nargs="*", help="dataset names to run")
    ap.add_argument("--stages", nargs="*", help="stage names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/ablation.json"))
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts/ablation"))
    ap.add_argument("--seeds", type=int, default=0,
                    help="training seeds 0..N-1 per stage (default: each config's \"seeds\")")
    ap.add_argument("--reuse", action="store_true",
                    help="read back finished runs under --artifacts trained with the same config")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("datasets", {})
    t_all = time.perf_counter()
    paths = sorted(Path(args.configs).glob("ablation-*.json"),
                   key=lambda p: (ORDER.index(p.stem[9:]) if p.stem[9:] in ORDER else len(ORDER), p.stem))
    for path in paths:
        spec = json.loads(path.read_text())
        name = spec["base"]["data"]
        if args.only and name not in args.only:
            continue
        if name != "synthetic" and not (data_dir() / name).is_dir():
            log.warning("skipping %s: not found under %s (set SEQREC_DATA)", name, data_dir())
            continue
        r = run_dataset(spec, name, args.stages or [], Path(args.artifacts), args.seeds, args.reuse)
        r["config_file"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        r["commit"] = git_commit(["model", "train", "bench/ablation.py", "bench/configs"])
        results["datasets"][name] = r
        results["wall_seconds_last_run"] = round(time.perf_counter() - t_all, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        plot(results["datasets"], out_path.with_suffix(".png"))
    print_table(results["datasets"])
    return 0


def print_table(datasets: Dict[str, Any]) -> None:
    print(f"\n{'dataset':18}{'stage':11}{'HR@10 [95% CI]':>26}{'NDCG@10 [95% CI]':>26}{'dHR@10 vs 2 [95% CI]':>28}")
    for name, r in datasets.items():
        for stage, row in r["stages"].items():
            m, ci = row["model"], row["model_ci95"]
            d = row.get("vs_stage_2", {}).get("HR@10")
            dtxt = f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f},{d['ci95'][1]:+.4f}]" if d else ""
            print(f"{name:18}{stage:11}{m['HR@10']:8.4f} [{ci['HR@10'][0]:.4f},{ci['HR@10'][1]:.4f}]"
                  f"{m['NDCG@10']:8.4f} [{ci['NDCG@10'][0]:.4f},{ci['NDCG@10'][1]:.4f}]{dtxt:>28}")


if __name__ == "__main__":
    sys.exit(main())
