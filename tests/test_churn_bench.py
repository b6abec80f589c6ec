"""bench/churn.py at a small size: a catalogue update (new and sold listings) archived, registered
and rolled out on a real TorchServe under load, with no failed request, and the new version
knowing the new listings and never answering a sold one. The 2M-item figure is `make bench-churn`."""
import json

import pytest

pytestmark = pytest.mark.torchserve


def test_churn_reaches_a_served_version_without_failures(tmp_path):
    from bench.churn import main

    out = tmp_path / "churn.json"
    assert main(["--items", "3000", "--new", "60", "--sold", "300", "--clients", "2",
                 "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["requests"]["failed"] == 0, r["requests"]
    assert r["requests"]["old_version"] > 0 and r["requests"]["new_version"] > 0, r["requests"]
    assert r["checks"]["new_version_answers_with_a_sold_listing"] == 0
    assert r["checks"]["old_version_answers_with_a_now_sold_listing"] > 0  # what the check would catch
    assert r["checks"]["new_listings_unknown_to_new_version"] == 0
    assert r["checks"]["new_listings_ranked_as_candidates"] == 10
    assert r["checks"]["probe_model_version"] == "2"
    update = r["new_export"]
    assert update["added"] == 60 and update["newly_unavailable"] == 300
    assert update["index"]["rebuilt"] is False and update["index"]["entries"] == r["base_index"]["entries"] + 60
    assert 0 < r["end_to_end_s"] < sum(r["phase_seconds"].values()) + 30
