"""Lay out an archive and config.properties the way KServe's TorchServe runtime mounts them.

    python ops/kserve_layout.py model_store/seqrec.mar build/kserve      # then upload build/kserve
    # -> build/kserve/config/config.properties, build/kserve/model-store/seqrec.mar

KServe's `kserve-torchserve` runtime mounts the InferenceService's storageUri at /mnt/models and
runs `torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties`, then (pytorch/torchserve-kfs images) a Python
wrapper on :8080 that reads the same file: it forwards requests to `inference_address` and waits
for a READY worker of each model named in `model_snapshot`. The plain Deployment in deploy/k8s
mounts the same folder.

The config written is the repository's config.properties with these keys set, every other line
as it is (tests/handler/test_kserve_torchserve.py checks both):
- enable_envvars_config=true: TorchServe then reads TS_* variables, the pod spec's switches:
  TS_SERVICE_ENVELOPE (the runtime sets it from protocolVersion), TS_DISABLE_TOKEN_AUTHORIZATION,
  TS_METRICS_ADDRESS, TS_INFERENCE_ADDRESS (deploy/).
- inference_address and management_address on 127.0.0.1:8085: the wrapper owns :8080 (and
  :8081 for its gRPC in recent versions); only the wrapper calls TorchServe, on loopback.
- model_store=<mount>/model-store.
- model_snapshot: the archive's name, version, workers and timeouts (from the model YAML it
  carries) with batchSize 1, which wins over the archive's YAML (seen on 0.12.0): TorchServe's
  KServe envelopes answer only the first request of a batch, so any batch of two fails (503).

Standard library only.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]
MOUNT = "/mnt/models"                  # where KServe mounts storageUri
CONFIG_PATH = "config/config.properties"
STORE_DIR = "model-store"
TORCHSERVE_ADDRESS = "http://127.0.0.1:8085"
# TorchServe's defaults for what a model YAML may leave out.
_YAML_DEFAULTS = {"minWorkers": 1, "maxWorkers": 1, "maxBatchDelay": 100, "responseTimeout": 120}


def read_archive(mar: Path) -> Tuple[str, str, Dict[str, int]]:
    """(model name, version, the model YAML's worker and timeout settings) of a .mar."""
    with zipfile.ZipFile(mar) as z:
        model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
        text = z.read(model["configFile"]).decode("utf-8") if model.get("configFile") else ""
    settings = dict(_YAML_DEFAULTS)
    for key in settings:  # flat `key: <int>` lines, as handler/model-config.yaml writes them
        m = re.search(rf"(?m)^{key}:\s*(\d+)\s*(#.*)?$", text)
        if m:
            settings[key] = int(m.group(1))
    return model["modelName"], model["modelVersion"], settings


def kserve_config(config_text: str, name: str, version: str, settings: Dict[str, int],
                  mount: str = MOUNT) -> str:
    """config.properties with the KServe keys set (in place where the key exists)."""
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: {
        "defaultVersion": True, "marName": f"{name}.mar", **settings, "batchSize": 1}}}}
    values = {"enable_envvars_config": "true",
              "inference_address": TORCHSERVE_ADDRESS, "management_address": TORCHSERVE_ADDRESS,
              "model_store": f"{mount.rstrip('/')}/{STORE_DIR}",
              "model_snapshot": json.dumps(snapshot, separators=(",", ":"))}
    text = config_text
    added = []
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}=.*$", lambda _: f"{key}={value}", text)
        if n == 0:
            added.append(f"{key}={value}")
    if added:
        text = text.rstrip("\n") + "\n\n# KServe storage layout (ops/kserve_layout.py)\n" + "\n".join(added) + "\n"
    return text


def write_layout(mar: Path, out: Path, config: Path = ROOT / "config.properties", mount: str = MOUNT) -> Path:
    """out/config/config.properties and out/model-store/<name>.mar (a copy, links followed)."""
    name, version, settings = read_archive(mar)
    (out / STORE_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mar, out / STORE_DIR / f"{name}.mar")
    target = out / CONFIG_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(kserve_config(config.read_text(), name, version, settings, mount))
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mar", type=Path, help="the archive (archive.sh's <out>/<name>.mar or <name>_<version>.mar)")
    p.add_argument("out", type=Path, help="folder to write config/ and model-store/ into (storageUri's content)")
    p.add_argument("--config", type=Path, default=ROOT / "config.properties")
    p.add_argument("--mount", default=MOUNT, help=f"where the folder is mounted at run time (default {MOUNT})")
    args = p.parse_args(argv)
    try:
        target = write_layout(args.mar, args.out, args.config, args.mount)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        print(f"kserve_layout: {args.mar}: {e}", file=sys.stderr)
        return 1
    print(f"{target} and {args.out / STORE_DIR}: mount at {args.mount}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
