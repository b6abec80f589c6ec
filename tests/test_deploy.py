"""deploy/ read back: every manifest parses, and the fields that must agree with config.properties,
the model YAML, the archive name and the KServe storage layout (ops/kserve_layout.py) do; the alert
rules are well formed and their SDK metrics are fields the SDK has. No Kubernetes here: nothing is
applied (deploy/README.md). What the rules need from a real /metrics is checked by
tests/handler/test_kserve_torchserve.py.

    .venv/bin/python -m pytest -q tests/test_deploy.py
"""
import json
import re
import shutil
import subprocess
import zipfile
from urllib.parse import urlparse

import pytest
import yaml
from deploy_checks import DEPLOY, SDK_GROUP, SDK_METRICS, alert_rules, metric_names

from devtools.local_server import CONFIG, config_ports
from ops import kserve_layout

MODEL = "seqrec"
MODEL_YAML = yaml.safe_load((DEPLOY.parent / "handler" / "model-config.yaml").read_text())
INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = config_ports(CONFIG)


def load(rel):
    docs = [d for d in yaml.safe_load_all((DEPLOY / rel).read_text()) if d is not None]
    assert len(docs) == 1, rel
    return docs[0]


def env_of(container):
    return {e["name"]: e["value"] for e in container.get("env", [])}


def port_of(url):
    return urlparse(url).port


def test_every_yaml_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 8, files
    for f in files:
        assert [d for d in yaml.safe_load_all(f.read_text()) if d], f


def test_inferenceservice_matches_config_layout_and_model():
    isvc = load("kserve/inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-torchserve" and model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v2" and model["storageUri"]
    env = env_of(model)
    assert env["TS_SERVICE_ENVELOPE"] == "kservev2"
    assert env["TS_DISABLE_TOKEN_AUTHORIZATION"] == "true"
    assert port_of(env["TS_METRICS_ADDRESS"]) == METRICS_PORT
    assert env["SEQREC_THREADS"] == "1"
    # One torch thread per worker: the CPUs asked for are the workers the model YAML starts.
    assert int(model["resources"]["requests"]["cpu"]) == MODEL_YAML["minWorkers"] * int(env["SEQREC_THREADS"])
    assert model["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{MODEL}/ready"
    assert model["readinessProbe"]["httpGet"]["port"] == 8080  # KServe's wrapper, not TorchServe
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert model["image"] == deployment_container()["image"]


def deployment_container():
    (c,) = load("k8s/deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_runs_the_kserve_layout_with_the_configs_ports():
    dep = load("k8s/deployment.yaml")
    c = deployment_container()
    mount = kserve_layout.MOUNT
    assert c["command"][:3] == ["torchserve", "--start", "--foreground"]
    assert f"--model-store={mount}/{kserve_layout.STORE_DIR}" in c["command"]
    assert f"--ts-config={mount}/{kserve_layout.CONFIG_PATH}" in c["command"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == [mount]
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_of(env["TS_INFERENCE_ADDRESS"]) == ports["inference"] == INFERENCE_PORT
    assert port_of(env["TS_METRICS_ADDRESS"]) == ports["metrics"] == METRICS_PORT
    assert urlparse(env["TS_MANAGEMENT_ADDRESS"]).hostname == "127.0.0.1"  # never outside the pod
    assert env["TS_DISABLE_TOKEN_AUTHORIZATION"] == "true"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT) and annotations["prometheus.io/scrape"] == "true"
    probe = " ".join(c["readinessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{port_of(env['TS_MANAGEMENT_ADDRESS'])}/models/{MODEL}'" in probe
    assert c["startupProbe"]["exec"]["command"] == c["readinessProbe"]["exec"]["command"]
    assert c["livenessProbe"]["httpGet"]["port"] == INFERENCE_PORT


def test_service_hpa_and_networkpolicy_point_at_the_deployment():
    dep = load("k8s/deployment.yaml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"] == labels
    names = {p["name"] for p in deployment_container()["ports"]}
    svc = load("k8s/service.yaml")
    assert svc["spec"]["selector"] == labels
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    hpa = load("k8s/hpa.yaml")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    policy = load("k8s/networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {INFERENCE_PORT, METRICS_PORT}
    kustomization = load("k8s/kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")
                                                       if p.name != "kustomization.yaml")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_the_plain_deployment_offline():
    r = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "Service"]


def test_scrape_config_and_alert_rules():
    scrape = load("prometheus/scrape.yaml")
    assert [(DEPLOY / "prometheus" / f).is_file() for f in scrape["rule_files"]] == [True]
    jobs = {j["job_name"] for j in scrape["scrape_configs"]}
    rules = list(alert_rules())
    assert {r["alert"] for _, r in rules} >= {
        "SeqrecHigh5xxRate", "SeqrecLoadShedding", "SeqrecP99ScoringLatency", "SeqrecWorkerRestarts",
        "SeqrecSdkFallbackRate"}
    for group, rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "warning") and rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
        names = metric_names(rule["expr"])
        assert names, rule
        if group == SDK_GROUP:
            assert names <= set(SDK_METRICS), (rule["alert"], names)
        else:
            assert not names & set(SDK_METRICS), rule["alert"]
        for job in re.findall(r'\bup\{job="([^"]+)"\}', rule["expr"]):
            assert job in jobs, (rule["alert"], job)


def test_sdk_metric_names_map_to_sdk_fields():
    """The SDK has no Prometheus exporter: deploy/README.md shows one built on these fields."""
    from dataclasses import fields

    import seqrec_sdk.models as models

    readme = (DEPLOY / "README.md").read_text()
    for name, (cls, attr) in SDK_METRICS.items():
        assert attr in {f.name for f in fields(getattr(models, cls))}, (name, cls, attr)
        family = re.sub(r"_(total|bucket)$", "", name)  # as the README's exporter declares it
        assert f'"{family}"' in readme and f".{attr}" in readme, (name, "not in deploy/README.md's exporter")


# ---- ops/kserve_layout.py (pure: no TorchServe)
def fake_mar(path, name="seqrec", version="1.0"):
    manifest = {"model": {"modelName": name, "modelVersion": version, "configFile": "model-config.yaml",
                          "handler": "seqrec_handler.py"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("model-config.yaml", (DEPLOY.parent / "handler" / "model-config.yaml").read_text())
    return path


def test_kserve_layout_changes_only_the_kserve_keys(tmp_path):
    config = kserve_layout.write_layout(fake_mar(tmp_path / "seqrec_1.0.mar"), tmp_path / "out")
    assert config == tmp_path / "out" / kserve_layout.CONFIG_PATH
    assert (tmp_path / "out" / kserve_layout.STORE_DIR / "seqrec.mar").is_file()
    before, after = CONFIG.read_text().splitlines(), config.read_text().splitlines()
    changed = {line.split("=", 1)[0] for line in set(before) ^ set(after) if "=" in line and not line.startswith("#")}
    assert changed == {"enable_envvars_config", "inference_address", "management_address", "model_store",
                       "model_snapshot"}
    props = dict(line.split("=", 1) for line in after if "=" in line and not line.startswith("#"))
    assert props["inference_address"] == props["management_address"] == kserve_layout.TORCHSERVE_ADDRESS
    assert props["model_store"] == f"{kserve_layout.MOUNT}/{kserve_layout.STORE_DIR}"
    (version,) = json.loads(props["model_snapshot"])["models"][MODEL].values()
    assert version["marName"] == "seqrec.mar" and version["defaultVersion"] is True
    assert version["batchSize"] == 1  # the envelopes answer one request per batch
    for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout"):
        assert version[key] == MODEL_YAML[key], key
    # The keys the layout leaves alone keep the shipped security settings.
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"


def test_kserve_layout_refuses_a_file_that_is_not_an_archive(tmp_path, capsys):
    (tmp_path / "x.mar").write_text("not a zip")
    assert kserve_layout.main([str(tmp_path / "x.mar"), str(tmp_path / "out")]) == 1
    assert "kserve_layout:" in capsys.readouterr().err
