"""Looking inside a running LocalTorchServe: its processes and their memory, its workers, what its
logs and /metrics say, the sockets it listens on. Linux (/proc) only.

    from devtools.ts_probes import server_processes, rss_mb, worker_pids, restarts_logged, metric_sum
    before = worker_pids(ts)                   # {"1.0": [pid, ...]} from the management API
    ...
    assert worker_pids(ts) == before and restarts_logged(ts) == 0

Used by tests/reliability and bench/reliability.py.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Dict, List

import requests

from devtools.local_server import session_pids

# What TorchServe 0.12's frontend logs (logs/ts_log.log) when a worker process goes away.
_RESTART_LINES = re.compile(r"Backend worker process died|Worker disconnected|Retry worker|Worker died")


def server_processes(ts) -> Dict[str, List[int]]:
    """{"frontend": [java pid], "workers": [python worker pids]}: the processes of the server's own
    session (LocalTorchServe starts the launcher with start_new_session)."""
    out: Dict[str, List[int]] = {"frontend": [], "workers": []}
    for pid in session_pids(ts.proc.pid):  # session id = the launcher's pid
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"model_service_worker" in cmd:
            out["workers"].append(pid)
        elif b"java" in cmd.split(b" ")[0]:
            out["frontend"].append(pid)
    return out


def rss_mb(pids) -> float:
    """Resident memory of these processes together, MiB (processes gone meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def server_rss_mb(ts) -> Dict[str, float]:
    procs = server_processes(ts)
    front, workers = rss_mb(procs["frontend"]), rss_mb(procs["workers"])
    return {"frontend_mb": front, "workers_mb": workers, "total_mb": front + workers,
            "workers": len(procs["workers"])}


def describe(ts, model: str = "seqrec", version: str = "all") -> list:
    r = requests.get(f"{ts.management_url}/models/{model}/{version}",
                     headers={"Authorization": f"Bearer {ts.management_key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def worker_pids(ts, model: str = "seqrec") -> Dict[str, List[int]]:
    """{version: sorted worker pids} as the management API describes them."""
    return {d["modelVersion"]: sorted(w["pid"] for w in d.get("workers", [])) for d in describe(ts, model)}


def ready_workers(ts, model: str = "seqrec") -> Dict[str, int]:
    return {d["modelVersion"]: sum(w.get("status") == "READY" for w in d.get("workers", []))
            for d in describe(ts, model)}


def restarts_logged(ts) -> int:
    """Lines of the frontend's log that mean a worker process died or was restarted."""
    f = ts.dir / "logs" / "ts_log.log"
    if not f.exists():
        return 0
    return sum(1 for line in f.read_text(errors="replace").splitlines() if _RESTART_LINES.search(line))


def metrics_text(ts) -> str:
    return requests.get(f"{ts.metrics_url}/metrics", timeout=30).text


def metric_sum(text: str, name: str, **labels) -> float:
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def listening_addresses(port: int) -> List[str]:
    """Local addresses with a listening TCP socket on this port (IPv4 and IPv6, an IPv4-mapped
    IPv6 address given as IPv4), from /proc/net."""
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            # /proc/net prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            # Java listens on an IPv6 socket: 127.0.0.1 shows as ::ffff:127.0.0.1
            out.append(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out
