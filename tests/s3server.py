"""A real S3 wire-protocol server for tests: moto's server mode in a subprocess.

Run directly as ``python tests/s3server.py --port N`` (``--port 0`` picks a
free port; the bound port is printed on stdout as ``S3SERVER-READY <port>``),
or from tests through :func:`start`, which returns an :class:`S3Server` handle.

The server wraps moto's WSGI application in :class:`CountingMiddleware`, which
counts at the server side, i.e. what really went over the wire:

* ``get_requests[key]`` / ``get_bytes[key]``: GET *object* requests (whatever
  their outcome) and the object bytes they served (bodies of 2xx answers only:
  a ranged GET counts its range, an error document counts nothing).
  ``key`` is ``"bucket/object-key"``;
* ``head_requests[key]``: HEAD object requests;
* ``requests``: every request the server answered (the counter endpoint aside),
  ``requests_by_method`` and ``unsigned_requests`` (neither an Authorization
  header nor a presigned-URL signature).

* ``get_ranges[key]``: the ``[start, end)`` byte range of every 2xx GET object
  request (the whole object when no Range was asked), in arrival order.

They are served on the same port: ``GET /_mesh_counters`` returns them as
JSON, ``POST /_mesh_counters/reset`` zeroes them.

A slow store, for tests of the mesh under a slow under-store:
``POST /_mesh_counters/config`` with JSON ``{"delay": S, "rate": B}`` makes
every GET object request wait ``S`` seconds before its first byte (a real
store's first-byte latency) and caps the object bytes all GETs together
send at ``B`` bytes a second (0: no cap). Also ``--delay``/``--rate`` flags.

Slow and failing writes, for tests of uploads in flight (write-back): the same
endpoint takes ``{"write_delay": S, "write_delay_after": S2, "fail": true}``.
Every write request (PutObject, CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload) waits ``S`` seconds before moto
handles it and ``S2`` seconds after (the store has done it, the client does not
know yet); with ``fail`` every S3 request is answered ``503 ServiceUnavailable``
(a store outage; moto keeps its objects, as a real store would). ``{"hold": true}``
makes every write request wait (before moto sees it) until ``{"hold": false}``:
an upload that is deterministically still in flight.
``in_flight`` (in the counters) counts the write requests being handled, by kind:
``put``, ``create``, ``part``, ``complete``, ``abort``.

Credentials. moto accepts any key unless IAM authentication is switched on,
which it does with ``INITIAL_NO_AUTH_ACTION_COUNT`` (the first N actions run
unauthenticated, every later one is checked against moto's IAM). That works in
server mode, but the counter lives in the server process, so a fixed N would
depend on what the test set up first. :func:`start` (``auth=True``) does it
deterministically instead: it starts the server with authentication off,
creates an IAM user with an ``s3:*`` policy and an access key through the IAM
API, and then switches authentication on for every later request with moto's
``POST /moto-api/reset-auth`` (body ``0``). From then on the handle's
``access_key``/``secret_key`` work, an unknown access key gets
``403 InvalidAccessKeyId`` and a wrong secret ``403 SignatureDoesNotMatch``
(HEAD requests carry no body, so clients see a bare 403 there).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

COUNTERS_PATH = "/_mesh_counters"
READY_PREFIX = "S3SERVER-READY"
REGION = "us-east-1"

# Query parameters that make a GET on an object key something else than
# reading the object (ACLs, tags, multipart listing, ...).
_OBJECT_SUBRESOURCES = frozenset(
    {"acl", "tagging", "uploadId", "uploads", "attributes", "legal-hold", "retention", "torrent"}
)

StartResponse = Callable[..., Any]


# --------------------------------------------------------------------------- server side


class CountingMiddleware:
    """WSGI middleware around moto's app that counts object reads."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
                 delay: float = 0.0, rate: float = 0.0) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.delay = delay
        self.rate = rate
        self._pace_lock = threading.Lock()
        self._next_free = 0.0  # the store's send pacing: when the next byte may go
        self.write_delay = 0.0  # seconds before a write request is handled
        self.write_delay_after = 0.0  # seconds after it was handled, before the answer goes
        self.fail = False  # a store outage: every S3 request gets 503
        self.released = threading.Event()  # cleared: write requests wait (hold)
        self.released.set()
        self.in_flight: Counter[str] = Counter()  # write requests being handled, by kind
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.get_requests: Counter[str] = Counter()
            self.get_bytes: Counter[str] = Counter()
            self.get_ranges: dict[str, list[tuple[int, int | None]]] = {}
            self.head_requests: Counter[str] = Counter()
            self.by_method: Counter[str] = Counter()
            self.requests = 0
            self.unsigned = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "get_requests": dict(self.get_requests),
                "get_bytes": dict(self.get_bytes),
                "get_ranges": {k: list(v) for k, v in self.get_ranges.items()},
                "head_requests": dict(self.head_requests),
                "requests_by_method": dict(self.by_method),
                "requests": self.requests,
                "unsigned_requests": self.unsigned,
                "in_flight": {k: v for k, v in self.in_flight.items() if v},
            }

    @staticmethod
    def object_key(environ: dict[str, Any]) -> str | None:
        """``"bucket/key"`` when the request addresses an object, else None."""
        # PATH_INFO is already percent-decoded, as UTF-8 bytes smuggled in latin-1 (PEP 3333).
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
        if host.endswith(".localhost"):  # virtual-hosted style: bucket.localhost
            path = "/" + host[: -len(".localhost")] + path
        bucket, _, key = path.lstrip("/").partition("/")
        if not bucket or not key:
            return None
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if _OBJECT_SUBRESOURCES.intersection(query):
            return None
        return f"{bucket}/{key}"

    @staticmethod
    def write_kind(environ: dict[str, Any]) -> str | None:
        """What write request this is (``put``, ``create``, ``part``, ``complete``, ``abort``), or None."""
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
        if host.endswith(".localhost"):  # virtual-hosted style: bucket.localhost
            path = "/" + host[: -len(".localhost")] + path
        bucket, _, key = path.lstrip("/").partition("/")
        if path.startswith(("/moto-api", COUNTERS_PATH)) or not bucket or not key:
            return None  # not an object (a bucket, moto's own API)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if method == "PUT":
            return "part" if "uploadId" in query else (None if _OBJECT_SUBRESOURCES.intersection(query) else "put")
        if method == "POST":
            return "create" if "uploads" in query else "complete" if "uploadId" in query else None
        if method == "DELETE" and "uploadId" in query:
            return "abort"
        return None

    def _write(self, kind: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """A write request, delayed as configured, counted in ``in_flight`` while handled."""
        with self.lock:
            self.in_flight[kind] += 1
        try:
            self.released.wait(600)
            if self.write_delay:
                time.sleep(self.write_delay)
            out = list(self.app(environ, start_response))
            if self.write_delay_after:
                time.sleep(self.write_delay_after)
            return out
        finally:
            with self.lock:
                self.in_flight[kind] -= 1

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == COUNTERS_PATH and method == "GET":
            body = json.dumps(self.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == COUNTERS_PATH + "/reset" and method == "POST":
            self.reset()
            start_response("204 No Content", [])
            return []
        if path == COUNTERS_PATH + "/config" and method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            conf = json.loads(environ["wsgi.input"].read(size) or b"{}")
            self.delay = float(conf.get("delay", self.delay))
            self.rate = float(conf.get("rate", self.rate))
            self.write_delay = float(conf.get("write_delay", self.write_delay))
            self.write_delay_after = float(conf.get("write_delay_after", self.write_delay_after))
            self.fail = bool(conf.get("fail", self.fail))
            if "hold" in conf:
                (self.released.clear if conf["hold"] else self.released.set)()
            start_response("204 No Content", [])
            return []
        if self.fail and not path.startswith("/moto-api"):
            with contextlib.suppress(Exception):  # drain the request: the connection stays usable
                size = int(environ.get("CONTENT_LENGTH") or 0)
                while size > 0:
                    got = environ["wsgi.input"].read(min(size, 1 << 20))
                    if not got:
                        break
                    size -= len(got)
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                    b"<Message>Service is unable to handle request.</Message></Error>")
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(body)))])
            return [body]

        key = self.object_key(environ)
        with self.lock:
            self.requests += 1
            self.by_method[method] += 1
            if "HTTP_AUTHORIZATION" not in environ and "X-Amz-Signature" not in environ.get(
                "QUERY_STRING", ""
            ):
                self.unsigned += 1
            if key is not None and method == "HEAD":
                self.head_requests[key] += 1
            if key is not None and method == "GET":
                self.get_requests[key] += 1
        kind = self.write_kind(environ)
        if kind is not None:
            return self._write(kind, environ, start_response)
        if key is None or method != "GET":
            return self.app(environ, start_response)
        if self.delay:
            time.sleep(self.delay)
        status: list[str] = []

        def capture(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            if code.startswith("2"):
                with self.lock:
                    self.get_ranges.setdefault(key, []).append(_range_of(environ.get("HTTP_RANGE", "")))
            return start_response(code, headers, exc_info)

        return self._count_body(key, self.app(environ, capture), status)

    def _count_body(self, key: str, result: Iterable[bytes], status: list[str]) -> Iterator[bytes]:
        """Pass the body through, counting it when it is object data (a 2xx answer)."""
        try:
            for chunk in result:
                ok = bool(status) and status[-1].startswith("2")
                if ok:
                    with self.lock:
                        self.get_bytes[key] += len(chunk)
                if ok and self.rate > 0:
                    yield from self._paced(chunk)
                else:
                    yield chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _paced(self, chunk: bytes) -> Iterator[bytes]:
        """``chunk`` in 64 KiB pieces, each sent when the store's shared rate allows."""
        view = memoryview(chunk)
        for i in range(0, len(view), 64 << 10):
            piece = view[i:i + (64 << 10)]
            with self._pace_lock:
                now = time.monotonic()
                at = max(now, self._next_free)
                self._next_free = at + len(piece) / self.rate
            if at > now:
                time.sleep(at - now)
            yield bytes(piece)


def _range_of(header: str) -> tuple[int, int | None]:
    """``bytes=a-b`` as ``(a, b + 1)``; ``(0, None)``: the whole object."""
    spec = header.strip().removeprefix("bytes=")
    lo, sep, hi = spec.partition("-")
    if not sep or not lo.isdigit():
        return 0, None
    return int(lo), int(hi) + 1 if hi.isdigit() else None


def _exit_with_parent() -> None:
    """Stop serving when the process that started us is gone (even after kill -9)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def serve(host: str, port: int, exit_with_parent: bool = False, delay: float = 0.0, rate: float = 0.0) -> None:
    """Serve moto + counters until SIGTERM; print the bound port when ready."""
    if exit_with_parent:
        threading.Thread(target=_exit_with_parent, daemon=True).start()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = CountingMiddleware(DomainDispatcherApplication(create_backend_app), delay, rate)
    # make_server is what werkzeug's run_simple(threaded=True) uses underneath;
    # calling it directly lets us bind port 0 and report the port we got.
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    bound = server.socket.getsockname()[1]
    os.environ["MOTO_PORT"] = str(bound)  # moto builds some URLs from it
    print(f"{READY_PREFIX} {bound}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--exit-with-parent", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each GET object's first byte")
    parser.add_argument("--rate", type=float, default=0.0, help="cap on GET object bytes per second (0: none)")
    args = parser.parse_args(argv)
    import logging
    import signal

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request log lines
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.host, args.port, args.exit_with_parent, args.delay, args.rate)


# --------------------------------------------------------------------------- client side


@dataclass
class S3Server:
    """Handle on a running server subprocess."""

    process: subprocess.Popen[str]
    endpoint: str
    region: str = REGION
    access_key: str = "testing"
    secret_key: str = "testing"
    auth: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def options(self) -> dict[str, str]:
        """Mount options of an ``s3://`` under-store that talks to this server."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
        }

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client with valid credentials (for test set-up)."""
        return self._boto_client("s3", **kwargs)

    def _boto_client(self, service: str, **kwargs: Any) -> Any:
        import boto3
        from botocore.config import Config

        args: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        }
        args.update(kwargs)
        session: Any = boto3.session.Session()  # Any: the service name is not a literal
        return session.client(service, **args)

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        # text/plain: moto reads the raw body, a form content type would swallow it.
        headers = {"Content-Type": "text/plain"} if data is not None else {}
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._request("GET", COUNTERS_PATH))
        return result

    def reset_counters(self) -> None:
        self._request("POST", COUNTERS_PATH + "/reset", b"")

    def slow_down(self, delay: float = 0.0, rate: float = 0.0) -> None:
        """Every GET object waits ``delay`` s before its first byte; object bytes go out at
        ``rate`` B/s at most, all GETs together (0, 0: back to full speed)."""
        self._request("POST", COUNTERS_PATH + "/config", json.dumps({"delay": delay, "rate": rate}).encode())

    def slow_writes(self, delay: float = 0.0, after: float = 0.0) -> None:
        """Every write request (PUT, multipart create/part/complete/abort) waits ``delay`` s
        before it is handled and ``after`` s after (0, 0: back to full speed)."""
        self._request("POST", COUNTERS_PATH + "/config",
                      json.dumps({"write_delay": delay, "write_delay_after": after}).encode())

    def outage(self, on: bool) -> None:
        """``on``: every S3 request is answered 503 ServiceUnavailable until ``outage(False)``."""
        self._request("POST", COUNTERS_PATH + "/config", json.dumps({"fail": on}).encode())

    def hold_writes(self, on: bool) -> None:
        """``on``: every write request waits, unanswered, until ``hold_writes(False)``."""
        self._request("POST", COUNTERS_PATH + "/config", json.dumps({"hold": on}).encode())

    def in_flight(self) -> dict[str, int]:
        """Write requests being handled right now, by kind (``put``, ``part``, ``complete``...)."""
        return dict(self.counters().get("in_flight", {}))

    def get_requests(self, bucket: str, key: str) -> int:
        return int(self.counters()["get_requests"].get(f"{bucket}/{key}", 0))

    def get_bytes(self, bucket: str, key: str) -> int:
        return int(self.counters()["get_bytes"].get(f"{bucket}/{key}", 0))

    def enable_auth(self) -> None:
        """Create an IAM user allowed s3:*, use its key, and make moto check every request."""
        iam = self._boto_client("iam")
        iam.create_user(UserName="mesh-test")
        iam.put_user_policy(
            UserName="mesh-test",
            PolicyName="s3-all",
            PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }),
        )
        key = iam.create_access_key(UserName="mesh-test")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        # INITIAL_NO_AUTH_ACTION_COUNT := 0 and request count := 0, in the server process.
        self._request("POST", "/moto-api/reset-auth", b"0")
        self.auth = True

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(auth: bool = True, timeout: float = 30.0) -> S3Server:
    """Start a server subprocess on a free port and wait until it answers."""
    env = dict(os.environ)
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # auth is switched on by enable_auth()
    env.pop("MOTO_PORT", None)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--port", "0", "--exit-with-parent"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    server: S3Server | None = None
    try:
        port = _read_port(proc, timeout)
        server = S3Server(process=proc, endpoint=f"http://127.0.0.1:{port}")
        atexit.register(server.stop)
        deadline = time.monotonic() + timeout
        while True:
            try:
                server.counters()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("S3 test server did not answer") from None
                time.sleep(0.05)
        if auth:
            server.enable_auth()
        return server
    except BaseException:
        if server is not None:
            server.stop()
        else:
            proc.kill()
            proc.wait()
        raise


def _read_port(proc: subprocess.Popen[str], timeout: float) -> int:
    result: list[int] = []
    ready = threading.Event()

    def reader() -> None:
        # Keep draining stdout after the ready line, so that anything moto
        # prints can never fill the pipe and block the server.
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:
                if not result and line.startswith(READY_PREFIX):
                    result.append(int(line.split()[1]))
                    ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True, name="s3server-stdout").start()
    ready.wait(timeout)
    if not result:
        with contextlib.suppress(Exception):
            proc.kill()
        raise RuntimeError(f"S3 test server did not start within {timeout}s (exit code {proc.poll()})")
    return result[0]


if __name__ == "__main__":
    main()
