"""A local TorchServe for development, tests, the demo and benchmarks (not packed into the .mar).

    from devtools.local_server import LocalTorchServe, archive
    archive("artifacts/demo", "/tmp/store")                       # -> /tmp/store/seqrec_<version>.mar
    with LocalTorchServe("/tmp/store", ["seqrec=seqrec.mar"]) as ts:
        ts.wait_ready(["/predictions/seqrec"])
        print(ts.post(body={"history": [100003], "k": 5}).json())

Each server gets free loopback ports (or the ones asked for), a config written from the repository's
config.properties, and a working directory of its own: key_file.json and logs/ land there, and
TMPDIR/TEMP point into it, because TorchServe keeps its pid file in the temp directory and its worker
sockets at $TEMP/.ts.sock.9000 — two servers sharing /tmp refuse to start or take over each other's
workers. `stop()` stops exactly the server it started (its own process session), never another.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import requests

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.properties"
_ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
_LAUNCHER_PID = "launcher.pid"  # our record of the `torchserve` launcher, for stop_server_in()


def free_ports(n: int = 3) -> Tuple[int, ...]:
    """n loopback ports nothing listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def config_ports(config: Path = CONFIG) -> Tuple[int, int, int]:
    """The (inference, management, metrics) ports a config.properties names."""
    text = Path(config).read_text()
    ports = []
    for key in _ADDRESS_KEYS:
        m = re.search(rf"(?m)^{key}=\S*:(\d+)\s*$", text)
        if not m:
            raise ValueError(f"{config}: no {key}=<scheme>://<host>:<port>")
        ports.append(int(m.group(1)))
    return tuple(ports)  # type: ignore[return-value]


def archive(export_dir, model_store, config=None, *, version: Optional[str] = None,
            name: str = "seqrec") -> Path:
    """./archive.sh export_dir --out model_store [--config config]; returns the versioned .mar.

    `version` archives the same files under another version label (a copy of the export with
    metadata.json's model_version changed): two arms to tell apart in tests, same weights."""
    export_dir, model_store = Path(export_dir), Path(model_store)
    with tempfile.TemporaryDirectory(prefix="seqrec-archive-") as scratch:
        if version is not None:
            relabelled = Path(scratch) / "export"
            shutil.copytree(export_dir, relabelled, ignore=shutil.ignore_patterns("train"))
            meta = json.loads((relabelled / "metadata.json").read_text())
            meta["model_version"] = version
            (relabelled / "metadata.json").write_text(json.dumps(meta))
            export_dir = relabelled
        version = str(json.loads((export_dir / "metadata.json").read_text())["model_version"])
        cmd = [str(ROOT / "archive.sh"), str(export_dir), "--out", str(model_store), "--name", name]
        if config is not None:
            cmd += ["--config", str(config)]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"archive.sh failed ({r.returncode}):\n{r.stderr}{r.stdout}")
    return model_store / f"{name}_{version}.mar"


class LocalTorchServe:
    """One TorchServe started from this process: `with LocalTorchServe(store, models) as ts: ...`.

    Args:
        model_store: folder holding the .mar files (see `archive`).
        models: `--models` entries, e.g. ["seqrec=seqrec.mar", "seqrec=seqrec_2.0.mar"]; the first
            one registered for a name is its default version.
        workdir: where the config, key_file.json, logs/ and tmp/ go; a fresh temporary folder if
            None (removed by `stop()`; the errors of wait_ready() carry the logs).
        ports: (inference, management, metrics); free loopback ports if None.
        settings: config.properties entries to set or add, e.g. {"number_of_gpu": "0"}.
        env: environment changes for the server; a None value removes the variable.
        config: the config.properties to start from (default: the repository's).
    """

    def __init__(self, model_store, models: Sequence[str] = ("seqrec=seqrec.mar",), *,
                 workdir=None, ports: Optional[Tuple[int, int, int]] = None,
                 settings: Optional[Mapping[str, str]] = None,
                 env: Optional[Mapping[str, Optional[str]]] = None, config=CONFIG) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = list(models)
        self._own_workdir = workdir is None
        self.dir = Path(workdir if workdir is not None else tempfile.mkdtemp(prefix="seqrec-torchserve-")).resolve()
        self.ports = tuple(ports) if ports is not None else free_ports(3)
        self.inference_port, self.management_port, self.metrics_port = self.ports
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.config = Path(config)
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    # -- addresses and keys --------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        """TorchServe writes it (mode 0600) where it was started; rewritten when a key rotates."""
        return self.dir / "key_file.json"

    @property
    def key(self) -> str:
        """The inference key, read afresh (a rotation changes it)."""
        return self._keys()["inference"]["key"]

    @property
    def management_key(self) -> str:
        return self._keys()["management"]["key"]

    @property
    def api_key(self) -> str:
        """The key of the token API: `GET <management_url>/token?type=inference` rotates a key."""
        return self._keys()["API"]["key"]

    def _keys(self) -> dict:
        return json.loads(self.key_file.read_text())

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "LocalTorchServe":
        if self.proc is not None:
            raise RuntimeError("this LocalTorchServe was already started")
        if _running_launcher(self.dir) is not None:
            raise RuntimeError(f"a TorchServe started from {self.dir} is still running: stop it first "
                               "(make stop, or stop_server_in(workdir))")
        busy = [p for p in self.ports if not _port_free(p)]
        if busy:
            raise RuntimeError(f"port(s) {busy} already in use on 127.0.0.1: another server running?")
        tmp = self.dir / "tmp"
        # What an earlier server of this workdir left: a stale pid file or key must not be read
        # as this one's.
        shutil.rmtree(tmp, ignore_errors=True)
        self.key_file.unlink(missing_ok=True)
        tmp.mkdir(parents=True)
        (self.dir / "config.properties").write_text(self._config_text())
        env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp))
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        launcher = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        self._log = open(self.dir / "torchserve.out", "wb")
        # Its own session: the launcher leads a process group holding Java and every worker, which
        # stop() can end as a whole without touching anything else.
        self.proc = subprocess.Popen(
            [launcher, "--start", "--ncs", "--foreground", "--ts-config", "config.properties",
             "--models", *self.models],
            cwd=self.dir, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / _LAUNCHER_PID).write_text(str(self.proc.pid))
        return self

    def _config_text(self) -> str:
        text = self.config.read_text()
        values: Dict[str, str] = {
            key: f"http://127.0.0.1:{port}" for key, port in zip(_ADDRESS_KEYS, self.ports)}
        values["model_store"] = str(self.model_store)
        metrics = re.search(r"(?m)^metrics_config=(.+)$", text)
        if metrics and not Path(metrics.group(1).strip()).is_absolute():
            # relative to the directory torchserve starts in, which is no longer the config's
            values["metrics_config"] = str((self.config.parent / metrics.group(1).strip()).resolve())
        values.update(self.settings)
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^{re.escape(key)}=.*$", lambda _: f"{key}={value}", text)
            if n == 0:
                text = text.rstrip("\n") + f"\n{key}={value}\n"
        return text

    def wait_ready(self, paths: Iterable[str] = ("/predictions/seqrec",), timeout: float = 180,
                   body: Optional[dict] = None) -> "LocalTorchServe":
        """Ready = a real prediction answers 200 on every path (/ping says Healthy while the
        workers are still loading). Raises RuntimeError with the logs if the server exits or is
        not ready within `timeout` seconds."""
        if self.proc is None:
            raise RuntimeError("start() first")
        body = body if body is not None else {"history": [], "k": 1}
        deadline = time.monotonic() + timeout
        pending = list(paths)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torchserve exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"torchserve not ready after {timeout:.0f}s:\n{self.logs()}")
            try:
                if self.key_file.exists() and self.post(pending[0], body, timeout=30).status_code == 200:
                    pending.pop(0)
                    continue
            except (requests.ConnectionError, requests.Timeout, ValueError, KeyError):
                pass  # not listening yet, or key_file.json half written
            time.sleep(0.5)
        return self

    def post(self, path: str = "/predictions/seqrec", body=None, *, data=None, token=True,
             timeout: float = 60) -> requests.Response:
        """POST JSON to the inference port: `body` is JSON-encoded, `data` is sent as is.
        token=True sends the current inference key, False none, a string that string."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.key if token is True else token}"
        payload = json.dumps(body) if data is None else data
        return requests.post(self.base_url + path, data=payload, headers=headers, timeout=timeout)

    def logs(self, n: int = 6000) -> str:
        """The last n characters of the launcher's output and of every TorchServe log file."""
        parts = []
        for f in [self.dir / "torchserve.out", *sorted((self.dir / "logs").glob("*.log"))]:
            if f.exists():
                parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)

    def stop(self, timeout: float = 30) -> None:
        """Stop this server (Java frontend, launcher, workers); safe to call twice, and after a
        failed start."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                _terminate(self.proc.pid, self.dir / "tmp" / ".model_server.pid", timeout,
                           wait=lambda t: self.proc.wait(timeout=t))
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        (self.dir / _LAUNCHER_PID).unlink(missing_ok=True)
        if self._own_workdir and self.proc.returncode is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else (
            "running" if self.proc.poll() is None else f"exited {self.proc.returncode}")
        return f"LocalTorchServe({self.base_url}, models={self.models}, dir={str(self.dir)!r}, {state})"


def stop_server_in(workdir) -> bool:
    """Stop a LocalTorchServe started by another process (e.g. `make serve`) from its workdir.
    False when no server of that workdir is running."""
    workdir = Path(workdir).resolve()
    pid = _running_launcher(workdir)
    if pid is None:
        return False
    _terminate(pid, workdir / "tmp" / ".model_server.pid", 30, wait=lambda t: _wait_gone(pid, t))
    (workdir / _LAUNCHER_PID).unlink(missing_ok=True)
    return True


def _running_launcher(workdir: Path) -> Optional[int]:
    """The pid of the torchserve launcher recorded in workdir, if that process still runs and
    really is a torchserve started there (pids get reused)."""
    try:
        pid = int((workdir / _LAUNCHER_PID).read_text().strip())
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if cwd != workdir.resolve() or not any(arg.endswith(b"torchserve") for arg in cmdline[:2]):
        return None
    return pid


def _terminate(launcher_pid: int, pid_file: Path, timeout: float, wait) -> None:
    """SIGTERM the Java frontend (its workers exit with it; the launcher follows), then SIGKILL
    whatever is left of the launcher's process group."""
    try:
        java = int(pid_file.read_text().strip())
        if os.getpgid(java) != launcher_pid:  # not ours (stale file, reused pid)
            raise ProcessLookupError(java)
        os.kill(java, signal.SIGTERM)
    except (OSError, ValueError):
        try:
            os.killpg(launcher_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(launcher_pid, signal.SIGKILL)  # leftovers of the session we created
    except ProcessLookupError:
        pass
    wait(10)


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait for a process that is not our child to exit (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":
            return
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(f"pid {pid}", timeout)
        time.sleep(0.2)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
