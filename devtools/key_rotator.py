"""ops/rotate_keys.py started beside a LocalTorchServe: `make serve`, the reliability benchmark
and the tests run the operator's command itself, as a process of its own, not a copy of its loop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ops" / "rotate_keys.py"
PID_FILE = "rotate_keys.pid"


def start(ts, *extra: str, detach: bool = False) -> subprocess.Popen:
    """Rotate ts's keys until it exits (--exit-with its launcher); the log goes to
    <workdir>/logs/rotate_keys.log. `detach`: a session of its own, so it outlives the caller
    (make serve), its pid in <workdir>/rotate_keys.pid."""
    logs = ts.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(SCRIPT), "--management", ts.management_url, "--key-file", str(ts.key_file),
            "--exit-with", str(ts.proc.pid), *extra]
    with open(logs / "rotate_keys.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=detach)
    if detach:
        (ts.dir / PID_FILE).write_text(str(proc.pid))
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGTERM (it ends its loop), SIGKILL if it does not; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def stop_detached(workdir: Path) -> bool:
    """Stop the rotator `start(..., detach=True)` left for workdir, if it is still that process."""
    pid_file = Path(workdir) / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    pid_file.unlink(missing_ok=True)
    if str(SCRIPT).encode() not in cmdline:  # the pid was reused
        return False
    os.kill(pid, signal.SIGTERM)
    return True
