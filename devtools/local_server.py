"""A local TorchServe for development, tests, the demo and benchmarks (not packed into the .mar).

    from devtools.local_server import LocalTorchServe, archive
    archive("artifacts/demo", "/tmp/store")                       # -> /tmp/store/seqrec_<version>.mar
    with LocalTorchServe("/tmp/store", ["seqrec=seqrec.mar"]) as ts:
        ts.wait_ready(["/predictions/seqrec"])
        print(ts.post(body={"history": [100003], "k": 5}).json())

Each server gets free loopback ports, gRPC's too (or the ones asked for), a config written from the
repository's config.properties, and a working directory of its own: key_file.json and logs/ land
there, and TMPDIR/TEMP point into it, because TorchServe keeps its pid file in the temp directory and
its worker sockets at $TEMP/.ts.sock.9000 — two servers sharing /tmp refuse to start or take over each
other's workers. `stop()` stops exactly the server it started (its own process session), never another,
also when it was launched the usual way, without --foreground (the launcher returns at once and leaves
Java running in that session):

    readme = "export TS_CONFIG_FILE=$PWD/config.properties; torchserve --start --models seqrec.mar"
    LocalTorchServe(root / "model_store", workdir=root, config=None, ports=config_ports(),
                    command=["bash", "-c", readme])    # root holds config.properties, model_store/
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
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import requests

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.properties"
_ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
_GRPC_KEYS = ("grpc_inference_port", "grpc_management_port")  # TorchServe opens both: 7070/7071 by default
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
        ports: (inference, management, metrics); free loopback ports if None, gRPC ones too.
        settings: config.properties entries to set or add, e.g. {"number_of_gpu": "0"}.
        env: environment changes for the server; a None value removes the variable.
        config: the config.properties to start from (default: the repository's); None writes no
            config, for a `command` that finds its own.
        config_at: where the server's config is written (default: <workdir>/config.properties).
        command: the launch command, run in workdir with `environ()` (default: `torchserve --start
            --ncs --foreground --ts-config <config_at> --models <models>`). Without --foreground
            the launcher exits at once; the server is then what it left in its process session.
    """

    def __init__(self, model_store, models: Sequence[str] = ("seqrec=seqrec.mar",), *,
                 workdir=None, ports: Optional[Tuple[int, int, int]] = None,
                 settings: Optional[Mapping[str, str]] = None,
                 env: Optional[Mapping[str, Optional[str]]] = None, config=CONFIG, config_at=None,
                 command: Optional[Sequence[str]] = None) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = list(models)
        self._own_workdir = workdir is None
        self.dir = Path(workdir if workdir is not None else tempfile.mkdtemp(prefix="seqrec-torchserve-")).resolve()
        self._free_ports = ports is None  # then gRPC's too, unless settings name them
        self.ports = tuple(ports) if ports is not None else free_ports(3)
        self.inference_port, self.management_port, self.metrics_port = self.ports
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.config = Path(config) if config is not None else None
        self.config_at = Path(config_at).resolve() if config_at is not None else self.dir / "config.properties"
        self.command = list(command) if command is not None else [
            "torchserve", "--start", "--ncs", "--foreground", "--ts-config", str(self.config_at),
            "--models", *self.models]
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
        busy = ports_in_use(self.ports)
        if busy:
            raise RuntimeError(f"port(s) {busy} already in use on 127.0.0.1: another server running?")
        tmp = self.dir / "tmp"
        # What an earlier server of this workdir left: a stale pid file or key must not be read
        # as this one's.
        shutil.rmtree(tmp, ignore_errors=True)
        self.key_file.unlink(missing_ok=True)
        tmp.mkdir(parents=True)
        if self.config is not None:
            self.config_at.parent.mkdir(parents=True, exist_ok=True)
            self.config_at.write_text(self._config_text())
        self._log = open(self.dir / "torchserve.out", "wb")
        # Its own session: the launcher leads a process group holding Java and every worker, which
        # stop() can end as a whole without touching anything else.
        self.proc = subprocess.Popen(self.command, cwd=self.dir, env=self.environ(), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / _LAUNCHER_PID).write_text(str(self.proc.pid))
        return self

    def environ(self) -> Dict[str, str]:
        """The environment of this server's launch, and of any `torchserve --stop` run beside it
        (in self.dir): its own TMPDIR/TEMP, this Python's torchserve first on PATH."""
        tmp = str(self.dir / "tmp")
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = dict(os.environ, TMPDIR=tmp, TEMP=tmp, PATH=path, PWD=str(self.dir))
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def running(self) -> bool:
        """The launcher runs, or something it started still runs in its session."""
        return self.proc is not None and (self.proc.poll() is None or bool(session_pids(self.proc.pid)))

    def wait_stopped(self, timeout: float = 60) -> None:
        """Wait until nothing of this server runs (e.g. after a `torchserve --stop`)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout)
            time.sleep(0.2)

    def _config_text(self) -> str:
        text = self.config.read_text()
        values: Dict[str, str] = {
            key: f"http://127.0.0.1:{port}" for key, port in zip(_ADDRESS_KEYS, self.ports)}
        values["model_store"] = str(self.model_store)
        if self._free_ports:  # off TorchServe's fixed gRPC defaults: several servers can run
            unset = [k for k in _GRPC_KEYS if k not in self.settings and not re.search(rf"(?m)^{k}=", text)]
            values.update(zip(unset, map(str, free_ports(len(unset)))))
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
            if not self.running():
                raise RuntimeError(f"torchserve exited (launcher: {self.proc.returncode}):\n{self.logs()}")
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
            if self.running():
                _terminate(self.proc.pid, self.dir / "tmp" / ".model_server.pid", timeout,
                           wait=self.wait_stopped)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        (self.dir / _LAUNCHER_PID).unlink(missing_ok=True)
        if self._own_workdir and not self.running():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else (
            "running" if self.running() else f"exited {self.proc.returncode}")
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


def session_pids(sid: int) -> List[int]:
    """Live (not zombie) processes of session `sid`, e.g. a LocalTorchServe's `proc.pid`: also what
    the launcher left behind once it exited. A zombie is over; init may never reap an orphaned Java."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def ports_in_use(ports: Iterable[int]) -> List[int]:
    """Those of `ports` that something on 127.0.0.1 already holds."""
    return [p for p in ports if not _port_free(p)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
