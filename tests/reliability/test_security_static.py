"""Security checks on the repository: nothing unpickles untrusted input, the handler never hands
TorchServe anything but JSON text, and the shipped config.properties keeps every door closed that
TorchServe 0.12 lets one close.

    .venv/bin/python -m pytest -q tests/reliability/test_security_static.py
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Code that ships or handles artifacts; tests may pickle their own objects (e.g. an SDK error).
SHIPPED = ("handler", "train", "model", "sdk/seqrec_sdk", "bench")
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def python_files(folders=None):
    roots = [ROOT / f for f in folders] if folders else [ROOT]
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(ROOT).parts
            if not any(part.startswith(".") or part in ("node_modules", "build", "artifacts") for part in rel):
                yield p


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def test_every_torch_load_has_weights_only_true():
    """torch.load without weights_only=True runs arbitrary pickle code from the file."""
    bad = []
    for path in python_files():
        for node, name in calls(ast.parse(path.read_text(), str(path))):
            if name == "torch.load":
                v = kw(node, "weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def test_no_unpickling_anywhere_in_shipped_code():
    """No pickle-family import in handler/, train/, model/, the SDK or bench/; numpy never with
    allow_pickle=True; no pandas.read_pickle; YAML only through safe_load."""
    bad = []
    for path in python_files(SHIPPED):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.split(".")[0] in UNPICKLERS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
                bad.append(f"{where}:{node.lineno}: from {node.module} import ...")
        for node, name in calls(tree):
            allow = kw(node, "allow_pickle")
            if name.endswith(("np.load", "numpy.load")) and not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            if name.endswith("read_pickle") or name.endswith("torch.package.PackageImporter"):
                bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            if name == "yaml.load" and "SafeLoader" not in ast.unparse(node):
                bad.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "unpickling in shipped code:\n" + "\n".join(bad)


def test_handler_answers_only_json_strings(tmp_path, monkeypatch):
    """TorchServe sends a str or bytes as is, torch.saves a tensor and json.dumps anything else
    (ts/protocol/otf_message_handler.py): seqrec must hand back one str holding one JSON object
    per request, whatever the request did (answer, fallback, candidates, 400, 500, describe)."""
    import json

    from handler_fixtures import load_handler, make_export, run_batch
    from ts.context import RequestProcessor

    h, ctx = load_handler(make_export(tmp_path / "export", num_items=40))
    ids = h.catalogue.decode(h.catalogue.rows.numpy())
    poison = int(h.catalogue.lookup([ids[5]])[0])
    forward = h._forward

    def flaky(seqs, feats):  # a model failure for one request: its answer is a 500
        if any(poison in s for s in seqs):
            raise RuntimeError("boom")
        return forward(seqs, feats)

    monkeypatch.setattr(h, "_forward", flaky)
    batch = [{"history": ids[:3], "k": 5}, {"history": []}, {"history": ids[:2], "candidates": ids[2:9], "k": 3},
             {"history": [ids[0]], "k": 0}, b"{not json", {"history": [ids[5]]}, {"history": [1, "x"]}]
    out = run_batch(h, ctx, batch)
    assert sorted({ctx.get_response_status(i)[0] for i in range(len(batch))}) == [200, 400, 500]
    ctx.request_processor = [RequestProcessor({"describe": "True"}), RequestProcessor({})]
    described = h.handle([{"body": b""}, {"body": {"history": []}}], ctx)
    for answers, n in ((out, len(batch)), (described, 2)):
        assert len(answers) == n
        for a in answers:
            assert type(a) is str, type(a)
            assert isinstance(json.loads(a), dict), a


# ---- the shipped config.properties
def properties(path: Path) -> dict:
    """java.util.Properties, enough of it: key=value lines, backslash escapes undone."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = re.sub(r"\\(.)", r"\1", value.strip())
    return out


@pytest.fixture(scope="module")
def shipped():
    return properties(ROOT / "config.properties")


def test_every_address_is_loopback(shipped):
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.fullmatch(r"https?://127\.0\.0\.1:\d+", shipped[key]), (key, shipped[key])


def test_token_auth_on_and_model_api_off(shipped):
    assert shipped.get("disable_token_authorization", "false") == "false"
    assert shipped.get("enable_model_api", "false") == "false"
    assert "enable_envvars_config" not in shipped or shipped["enable_envvars_config"] == "false"


def test_allowed_urls_admit_local_archives_only(shipped):
    """TorchServe matches each comma-separated allowed_urls regex against the whole URL,
    case-insensitively (ArchiveUtils.validateURL). Its default admits any http(s) URL."""
    patterns = [re.compile(p, re.IGNORECASE) for p in shipped["allowed_urls"].split(",")]
    allowed = lambda url: any(p.fullmatch(url) for p in patterns)  # noqa: E731
    assert allowed("file:///srv/model_store/seqrec_1.0.mar")
    for url in ("http://evil.example/seqrec.mar", "https://127.0.0.1/seqrec.mar", "HTTP://x/y.mar",
                "file:///etc/passwd", "file:///srv/x.mar.sh", "s3://bucket/seqrec.mar",
                "ftp://host/seqrec.mar", "file://host/x.tar.gz"):
        assert not allowed(url), url


def test_response_limit_covers_the_largest_echo(shipped):
    """An answer echoes the unknown history ids with \\uXXXX escapes: up to 3x the request's bytes
    (plus 1000 items). Over max_response_size the frontend drops the worker (500 for the whole
    batch, a restart), so the limit must cover it (found by test_fuzz_torchserve.py)."""
    request = int(shipped.get("max_request_size", 6_553_500))
    assert int(shipped.get("max_response_size", 6_553_500)) >= 3 * request + 100_000
