"""ops/rotate_keys.py keeps a real TorchServe's short-lived keys valid under SDK load: the fast
version of bench/reliability.py's keys phase (there: keys living 60 s, >= 6 min of load).

    .venv/bin/python -m pytest -q tests/reliability/test_key_rotation.py

Keys live 6 s here (token_expiration_min=0.1) and are rotated every 3 s, so over 15 s of calls the
client's key is swapped about five times while requests are in flight: every swap refuses the old
key at once, and TorchServe rewrites key_file.json in place just after.
"""
import pandas as pd
import pytest
from torchserve_fixtures import requires_java, tiny_export

from bench.reliability_fleet import phase_keys
from devtools.local_server import archive

pytestmark = [pytest.mark.torchserve, requires_java]

MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"


def test_short_lived_keys_renewed_under_load_cost_no_call(tmp_path):
    export = tiny_export(tmp_path / "export")
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    archive(export, tmp_path / "store", tmp_path / "model.yaml")
    items = pd.read_parquet(export / "items.parquet", columns=["item_id", "available"])
    ids = items.loc[items["available"], "item_id"].tolist()
    bodies = [{"history": ids[i:i + 5], "k": 5} for i in range(0, 50, 5)]
    out = phase_keys(tmp_path / "store", ["seqrec=seqrec.mar"], tmp_path, bodies, ids[:10],
                     rate=20, seconds=15, lifetime_min=0.1)
    assert out["auth_errors"] == 0 and out["failed"] == 0, out["failed_examples"]
    assert out["calls"] >= 200, out["calls"]
    assert out["rotations"] >= 4 and out["rotation_failures"] == 0, out
    assert out["token_reloads"] >= 2, out  # the client really met rotated keys
    assert out["first_key_refused_after"] and out["rotator_alive_until_stopped"], out
