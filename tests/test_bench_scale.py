"""bench/scale.py end to end at a tiny size: every phase runs through the real CLI pieces and the
JSON holds what issue 11 asks for (sizes, phase seconds, events/s, peak RSS, metrics, the export)."""
import json
import zipfile

import pytest

from bench.scale import main, table

TINY = ["--small", "--items", "400", "--users", "300", "--events-per-user", "5,30",
        "--set", "max_test_users=50", "sample_size=128", "model.embedding_dim=8", "model.hidden_dim=16"]


@pytest.mark.training
def test_scale_benchmark_runs_every_phase_and_reports_them(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert main(TINY + ["--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    d = r["data"]
    assert d["events"] == d["events_generated"] > 300 * 5 - 1  # a clean log: every generated row loaded
    assert d["users"] == 300 and 12 <= d["items"] <= d["items_generated"] == 400
    assert set(r["phase_seconds"]) == {"generate", "load", "split_windows", "train_epoch",
                                       "validation_and_checkpoint", "evaluate", "export", "archive"}
    assert all(v is not None and v >= 0 for v in r["phase_seconds"].values())
    assert r["training_events_per_s"] > 0 and r["wall_seconds"] >= sum(r["phase_seconds"].values()) * 0.9
    rss = r["peak_rss_gb"]
    assert rss["train"] > 0.05 and rss["run"] == max(rss["train"], rss["archive"])  # torch alone is > 50 MB
    assert len(r["load_average"]["start"]) == len(r["load_average"]["end"]) == 3
    assert r["commit"].split("-")[0] and len(r["commit"].split("-")[0]) == 40

    # The test users beyond max_test_users are a stated sample, in the results, summary and metadata.
    t = r["test"]
    assert (t["users"], t["of"], t["sampled"], t["seed"]) == (50, 300, True, 0)
    export = tmp_path / "work" / "export"
    summary = json.loads((export / "train" / "summary.json").read_text())
    meta = json.loads((export / "metadata.json").read_text())
    assert summary["data"]["test_sample"] == meta["data_summary"]["test_sample"] == {
        k: t[k] for k in ("users", "of", "max_test_users", "sampled", "seed")}
    assert summary["test"]["model"]["users"] == summary["test"]["popularity"]["users"] == 50
    for name in ("model", "popularity"):
        lo, hi = t[name]["HR@10_ci95"]
        assert 0 <= lo <= t[name]["HR@10"] <= hi <= 1

    with zipfile.ZipFile(r["export"]["archive"]) as mar:
        assert {"model.pt", "item_vectors.npy", "metadata.json"} <= set(mar.namelist())
    assert r["export"]["archive_bytes"] > r["export"]["bytes"] * 0.1 > 0
    assert set(r["meets_issue_targets"]) == {"items", "events", "training_events_per_s", "peak_rss_gb",
                                             "model_above_popularity"}
    assert f"| {d['items']:,} | 300 | {d['events']:,} |" in table(r) in capsys.readouterr().out
