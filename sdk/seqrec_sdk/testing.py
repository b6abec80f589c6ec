"""A fake seqrec server for tests: the HTTP contract on 127.0.0.1, standard library only.

Backends can test their own code against it without TorchServe; the SDK's tests and its
overhead benchmark use it too. It imitates what the SDK relies on: the request validation
(400 BadRequest), TorchServe's token check (400 InvalidKeyException), 404 for an unknown model
or version, versioned URLs, the management ``GET /models/<model>/all``. Its ranking is a
deterministic toy, not a model. Not imported by ``seqrec_sdk`` itself.

    with FakeSeqrecServer(versions=("1.0", "2.0"), token="secret") as server:
        client = Client(server.url, token="secret")
        server.script(Reply(503), Reply(503))   # the next two requests get 503
        ...
        server.requests                         # what the server received

    python -m seqrec_sdk.testing --port 8080 --token secret     # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["FakeSeqrecServer", "Reply", "RecordedRequest"]

_FIELDS = {"history", "k", "exclude_seen", "exclude", "candidates", "user_id", "now"}
_EVENT_FIELDS = {"item_id", "timestamp", "event_type", "source", "strength"}


@dataclass(frozen=True)
class Reply:
    """A scripted answer. ``drop=True`` closes the connection without answering (the client
    sees a connection error); ``delay`` seconds pass first (to trigger client timeouts)."""

    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> sent as is; None -> a default error body
    delay: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Dict[str, str]
    body: Any


class _BadRequest(Exception):
    pass


def _error(code: int, type_: str, message: str) -> Dict[str, Any]:
    return {"code": code, "type": type_, "message": message}


class FakeSeqrecServer:
    def __init__(
        self,
        model: str = "seqrec",
        versions: Sequence[str] = ("1.0",),
        *,
        token: Optional[str] = None,
        management_token: Optional[str] = None,
        catalogue: Sequence[Any] = tuple(range(1, 201)),
        port: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.model = model
        self.versions = list(versions)
        self.token = token  # change it at run time to imitate a key rotation
        self.management_token = management_token
        self.catalogue = list(catalogue)
        self.delay = delay  # seconds added to every answer
        self.recording = True
        self._index = {str(i): i for i in self.catalogue}
        self._lock = threading.Lock()
        self._script: Deque[Reply] = deque()
        self._requests: List[RecordedRequest] = []
        self._connections: Set[socket.socket] = set()  # live keep-alive sockets, cut by stop()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -- control -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeSeqrecServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-seqrec",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a killed server would: refuse new connections and cut the open ones."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        with self._lock:
            open_connections, self._connections = list(self._connections), set()
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the other side
                pass

    def __enter__(self) -> "FakeSeqrecServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next requests (any path), before the normal behaviour."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> List[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._script.clear()

    # -- behaviour -----------------------------------------------------------------------------
    def _next_scripted(self) -> Optional[Reply]:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _record(self, req: RecordedRequest) -> None:
        if self.recording:
            with self._lock:
                self._requests.append(req)

    def _authorized(self, headers: Dict[str, str], expected: Optional[str]) -> bool:
        return expected is None or headers.get("authorization") == f"Bearer {expected}"

    def answer(self, method: str, path: str, headers: Dict[str, str],
               raw: bytes) -> Tuple[int, Any]:
        """(status, JSON body) for a request, as the real server would answer it."""
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts[:1] == ["ping"]:
            return 200, {"status": "Healthy"}
        if method == "GET" and len(parts) == 3 and parts[0] == "models" and parts[2] == "all":
            if not self._authorized(headers, self.management_token):
                return 400, _error(400, "InvalidKeyException", "Token Authentication failed. "
                                   "Token either incorrect, expired, or not provided correctly")
            if parts[1] != self.model:
                return 404, _error(404, "ModelNotFoundException", f"Model not found: {parts[1]}")
            return 200, [self._describe(v) for v in self.versions]
        if method != "POST" or parts[:1] != ["predictions"] or len(parts) not in (2, 3):
            return 404, _error(404, "ResourceNotFoundException", "Requested resource is not found")
        if not self._authorized(headers, self.token):
            return 400, _error(400, "InvalidKeyException", "Token Authentication failed. Token "
                               "either incorrect, expired, or not provided correctly")
        if parts[1] != self.model:
            return 404, _error(404, "ModelNotFoundException", f"Model not found: {parts[1]}")
        version = parts[2] if len(parts) == 3 else self.versions[0]
        if version not in self.versions:
            return 404, _error(404, "ModelNotFoundException",
                               f"Model version: {version} does not exist for model: {parts[1]}")
        try:
            return 200, self._predict(json.loads(raw or b"null"), version)
        except (ValueError, _BadRequest) as e:
            return 400, _error(400, "BadRequest", str(e))

    def _describe(self, version: str) -> Dict[str, Any]:
        return {"modelName": self.model, "modelVersion": version,
                "modelUrl": f"{self.model}_{version}.mar", "batchSize": 8, "maxBatchDelay": 5,
                "workers": [{"id": "9000", "status": "READY"}, {"id": "9001", "status": "READY"}]}

    def _predict(self, body: Any, version: str) -> Dict[str, Any]:
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        unknown = set(body) - _FIELDS
        if unknown:
            raise _BadRequest(f"unknown fields: {sorted(unknown)}")
        history = body.get("history")
        if not isinstance(history, list):
            raise _BadRequest("history must be a list")
        ids = []
        for i, h in enumerate(history):
            if isinstance(h, dict):
                if "item_id" not in h or set(h) - _EVENT_FIELDS:
                    raise _BadRequest(f"history[{i}]: an event needs item_id and only {sorted(_EVENT_FIELDS)}")
                h = h["item_id"]
            if isinstance(h, bool) or not isinstance(h, (int, str)):
                raise _BadRequest(f"history[{i}]: item ids are ints or strings")
            ids.append(h)
        k = body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise _BadRequest(f"k must be an int in 1..1000, got {k!r}")
        known = [self._index[str(h)] for h in ids if str(h) in self._index]
        banned = {str(i) for i in body.get("exclude") or ()}
        if body.get("exclude_seen", True):
            banned |= {str(i) for i in known}
        pool = body.get("candidates")
        pool = [self._index[str(c)] for c in pool if str(c) in self._index] if pool is not None \
            else self.catalogue
        if known:  # a toy ranking that depends on the version and the last item
            seed = f"{version}|{known[-1]}"
            scored = sorted(((zlib.crc32(f"{seed}|{i}".encode()) / 2**32, i) for i in pool),
                            reverse=True)
        else:  # empty or all-unknown history: popular items (catalogue order), flagged
            scored = [(1.0 / (1 + r), i) for r, i in enumerate(pool)]
        items = [{"item_id": i, "score": round(s, 6)} for s, i in scored if str(i) not in banned]
        out: Dict[str, Any] = {"items": items[:k], "model": self.model, "model_version": version,
                               "unknown_items": [h for h in ids if str(h) not in self._index]}
        if not known:
            out["fallback"] = "popular"
        return out

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe
            # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
                server._record(RecordedRequest(self.command, self.path, headers, parsed))
                reply = server._next_scripted()
                delay = server.delay + (reply.delay if reply else 0.0)
                if delay:
                    time.sleep(delay)
                if reply is not None and reply.drop:
                    self.close_connection = True
                    return
                if reply is not None:
                    status, body = reply.status, reply.body
                    if body is None and status >= 400:
                        body = _error(status, "ScriptedError", f"scripted {status}")
                else:
                    status, body = server.answer(self.command, self.path, headers, raw)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("x-request-id", headers.get("x-request-id", "fake"))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
                pass

        return Handler


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--versions", default="1.0", help="comma-separated, first is default")
    args = parser.parse_args(argv)
    server = FakeSeqrecServer(versions=args.versions.split(","), token=args.token, port=args.port)
    server.recording = False  # long runs: do not keep every request in memory
    print(f"listening on {server.url}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
