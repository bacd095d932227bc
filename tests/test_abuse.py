"""A real ``meshd embedded`` process under abuse stays bounded and quiet (issue 20):

- slow senders (a request head or a wire frame byte by byte, a silent connection, a
  body that stops) are cut on every listener, while normal clients are served;
- requests in flight per client (and pipelined on one wire connection) are capped,
  and over the cap each protocol says "slow down" in its own terms;
- integers out of range and JSON nested too deep are 400s / InvalidArgument;
- each rejection is one log line, never a traceback;
- temporary files of crashed writes are removed at start-up and by the periodic
  sweep, fresh ones (writes in flight) are kept, nothing outside the store is touched.

The node runs with short limits (2 s) so that the cuts come quickly; the bounds
asserted are generous (the cut must come at all, within 30 s).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.meshd_proc import MeshdProcess, hostport, wire_reply

LIMIT = 4  # requests in flight per client, per listener
PIPELINE = 2  # metadata wire requests in flight per connection (below LIMIT: this cap binds first)
HOUR = 3600


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("abuse")
    store = root / "store"
    (store / "sub").mkdir(parents=True)
    (store / "hello.txt").write_bytes(b"hello\n")
    old = time.time() - 2 * HOUR
    for p in (store / ".mesh-tmp-crashed1", store / "sub" / ".mesh-tmp-crashed2"):
        p.write_bytes(b"half a write")
        os.utime(p, (old, old))
    (store / ".mesh-tmp-inflight").write_bytes(b"a write in progress")
    (store / "sub" / "not-tmp-old").write_bytes(b"an old file that is not ours")
    os.utime(store / "sub" / "not-tmp-old", (old, old))
    outside = root / "outside"
    outside.mkdir()
    (outside / ".mesh-tmp-not-in-the-store").write_bytes(b"x")
    os.utime(outside / ".mesh-tmp-not-in-the-store", (old, old))
    (store / "link").symlink_to(outside)  # the sweep must not follow it
    return store


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[MeshdProcess]:
    d = tmp_path_factory.mktemp("abuse-node")
    cfg = d / "meshd.yaml"
    cfg.write_text(json.dumps({"limits": {
        "header_timeout": 2, "body_timeout": 2, "max_in_flight_per_client": LIMIT,
        "max_in_flight_per_connection": PIPELINE, "tmp_max_age": HOUR, "tmp_sweep_interval": 0.5}}))
    n = MeshdProcess(d / "data", [f"/data=file://{store}"], ["--config", str(cfg)]).start()
    yield n
    n.stop()



def get(url: str, target: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*hostport(url), timeout=30)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def closed(sock: socket.socket) -> bool:
    """Whether the node closed (or reset) ``sock``; waits at most a moment."""
    sock.settimeout(0.05)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def frame(req_id: int, body: bytes) -> bytes:
    return struct.pack("!II", len(body), req_id) + body


def wire_call(sock: socket.socket, req_id: int, body: bytes) -> dict[str, object]:
    sock.sendall(frame(req_id, body))
    return wire_reply(sock)[1]



def test_temp_files_of_crashed_writes_are_swept(node: MeshdProcess, store: Path) -> None:
    wait_until(lambda: sorted(p.name for p in store.rglob(".mesh-tmp-*")), lambda names: names == [
        ".mesh-tmp-inflight"], 30, "the start-up sweep did not remove the stale temporary files")
    assert (store / "sub" / "not-tmp-old").exists()  # not ours: kept, however old
    assert (store.parent / "outside" / ".mesh-tmp-not-in-the-store").exists()  # behind a symlink
    # a write in flight that then crashes: its file gets old, and the periodic sweep takes it
    old = time.time() - 2 * HOUR
    os.utime(store / ".mesh-tmp-inflight", (old, old))
    wait_until(lambda: (store / ".mesh-tmp-inflight").exists(), lambda e: not e, 30,
               "the periodic sweep did not remove a temporary file that became stale")
    assert "removed 1 temporary file(s)" in node.log.read_text()


def test_slow_senders_are_cut_on_every_listener(node: MeshdProcess) -> None:
    ep = node.endpoints
    slow: dict[str, tuple[socket.socket, bytes]] = {}
    for name in ("http", "s3", "webhdfs"):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
        slow[name] = (socket.create_connection(hostport(ep[name])), head)
    # a wire frame whose header and body come a byte at a time
    slow["meta"] = (socket.create_connection(hostport(ep["meta"])),
                    frame(1, json.dumps(["stat", {"p": "/data/hello.txt" + "/" * 500}]).encode()))
    silent = {name: socket.create_connection(hostport(ep[name])) for name in ("http", "s3", "webhdfs", "meta")}
    cut: set[str] = set()
    served = 0
    deadline = time.monotonic() + 30
    i = 0
    while len(cut) < len(slow) + len(silent) and time.monotonic() < deadline:
        for name, (sock, data) in slow.items():
            if name in cut:
                continue
            try:
                sock.send(data[i:i + 1])
            except OSError:
                cut.add(name)
                continue
            if closed(sock):
                cut.add(name)
        for name, sock in silent.items():
            if "silent " + name not in cut and closed(sock):
                cut.add("silent " + name)
        # meanwhile a normal client is served on every port
        assert get(ep["http"], "/healthz")[0] == 200
        assert get(ep["s3"], "/data/hello.txt") == (200, b"hello\n")
        served += 1
        i += 1
        time.sleep(0.2)
    assert cut == {*slow, *(f"silent {n}" for n in silent)}, f"not cut within 30 s: {set(slow) - cut}"
    assert i < 1000  # every slow head was still incomplete when cut
    assert served >= 2
    log = node.log.read_text()
    assert "no complete request head within 2 s" in log and "no complete frame within 2 s" in log
    for sock, _ in slow.values():
        sock.close()
    for sock in silent.values():
        sock.close()


SLOW_PUTS = {
    "http": "PUT /v1/files/data/slow-http HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    "s3": "PUT /data/slow-s3 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    "webhdfs": ("PUT /webhdfs/v1/data/slow-webhdfs?op=CREATE&datanode=true&user.name=u HTTP/1.1\r\n"
                "Host: x\r\nContent-Length: 100\r\n\r\n"),
}


def test_requests_in_flight_per_client_are_capped_and_a_stalled_body_is_cut(
        node: MeshdProcess, store: Path) -> None:
    ep = node.endpoints
    stalled = []
    for name, head in SLOW_PUTS.items():
        for _ in range(LIMIT):  # every slot of this client: bodies that stop after 10 bytes
            s = socket.create_connection(hostport(ep[name]))
            s.sendall(head.encode() + b"0123456789")
            stalled.append(s)
    time.sleep(0.5)  # let the node start the handlers (not a timed assertion: the answers below tell)
    # over the cap: each protocol's own "slow down"
    status, body = get(ep["http"], "/v1/files/data/hello.txt")
    assert status == 503 and json.loads(body)["error"] == "SlowDown", body
    status, body = get(ep["s3"], "/data/hello.txt")
    assert status == 503 and b"<Code>SlowDown</Code>" in body, body
    status, body = get(ep["webhdfs"], "/webhdfs/v1/data/hello.txt?op=GETFILESTATUS")
    assert status == 503, body
    assert json.loads(body)["RemoteException"]["exception"] == "RetriableException"
    # the stalled bodies are cut (body_timeout 2 s), which frees the slots
    wait_until(lambda: [closed(s) for s in stalled], all, 30, "stalled request bodies were not cut")
    for s in stalled:
        s.close()
    wait_until(lambda: get(ep["s3"], "/data/hello.txt")[0], lambda st: st == 200, 30, "S3 slots not freed")
    assert get(ep["http"], "/v1/files/data/hello.txt") == (200, b"hello\n")
    assert get(ep["webhdfs"], "/webhdfs/v1/data/hello.txt?op=GETFILESTATUS")[0] == 200
    # no half write became a file, none left a temporary file
    assert not [p.name for p in store.glob("slow-*")]
    assert not list(store.glob(".mesh-tmp-*"))
    assert "no byte of the request body for 2 s" in node.log.read_text()


def test_wire_pipelining_over_the_cap_gets_slow_down_replies(node: MeshdProcess) -> None:
    with socket.create_connection(hostport(node.endpoints["meta"])) as s:
        n = 5 * PIPELINE
        s.sendall(b"".join(frame(i, json.dumps(["stat", {"p": "/data/hello.txt"}]).encode())
                           for i in range(1, n + 1)))
        replies = dict(wire_reply(s) for _ in range(n))
        assert sorted(replies) == list(range(1, n + 1))
        kinds = [r.get("e", "ok") for r in replies.values()]
        assert set(kinds) == {"ok", "SlowDown"} and kinds.count("ok") >= PIPELINE, kinds
        assert all("in flight on this connection" in str(r["m"]) for r in replies.values() if "e" in r)
        assert "r" in wire_call(s, n + 1, json.dumps(["stat", {"p": "/data/hello.txt"}]).encode())


@pytest.mark.parametrize(("port", "target", "expect"), [
    ("http", "/v1/files/data/hello.txt?offset=" + "9" * 5000, "InvalidArgument"),
    ("http", "/v1/files/data/hello.txt?offset=99999999999999999999", "InvalidArgument"),
    ("http", "/v1/files/data/hello.txt?offset=-1", "InvalidArgument"),
    ("http", "/v1/files/data/hello.txt?length=1_0", "InvalidArgument"),
    ("http", "/v1/pages/data/hello.txt?index=0&size=6&version=v&start=" + "1" * 30, "InvalidArgument"),
    ("webhdfs", "/webhdfs/v1/data/hello.txt?op=OPEN&datanode=true&offset=" + "9" * 5000,
     "IllegalArgumentException"),
    ("webhdfs", "/webhdfs/v1/data/hello.txt?op=OPEN&datanode=true&length=99999999999999999999",
     "IllegalArgumentException"),
    ("webhdfs", "/webhdfs/v1/data/hello.txt?op=OPEN&datanode=true&buffersize=2147483648",
     "IllegalArgumentException"),
    ("webhdfs", "/webhdfs/v1/data/hello.txt?op=OPEN&datanode=true&offset=1_000",
     "IllegalArgumentException"),
])
def test_integers_out_of_range_are_400(node: MeshdProcess, port: str, target: str, expect: str) -> None:
    status, body = get(node.endpoints[port], target)
    assert status == 400, body
    d = json.loads(body)
    assert (d["RemoteException"]["exception"] if port == "webhdfs" else d["error"]) == expect, d


def test_webhdfs_replication_out_of_range(node: MeshdProcess) -> None:
    conn = http.client.HTTPConnection(*hostport(node.endpoints["webhdfs"]), timeout=30)
    conn.request("PUT", "/webhdfs/v1/data/hello.txt?op=SETREPLICATION&replication=40000&user.name=u")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 400 and b"IllegalArgumentException" in body, body


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    json.dumps(["stat", {"p": "/x"}]).encode()[:-2] + b', "deep": ' + b"[" * 70 + b"]" * 70 + b"}]",
    b'["list", {"p": "/data", "n": ' + b"9" * 30 + b"}]",
    b'["list", {"p": "/data", "n": 1e999}]',
    b'["stat", {"p": "/data/hello.txt"}',
    b"\xff\xfe not json",
    b'["no.such.op", {}]',
    b'["stat", []]',
    b"[]",
])
def test_bad_wire_frames_get_an_error_reply_and_the_connection_lives(node: MeshdProcess, body: bytes) -> None:
    with socket.create_connection(hostport(node.endpoints["meta"])) as s:
        reply = wire_call(s, 7, body)
        assert reply.get("e") == "InvalidArgument", reply
        assert "Traceback" not in str(reply)
        assert "r" in wire_call(s, 8, json.dumps(["stat", {"p": "/data/hello.txt"}]).encode())


def test_a_truncated_frame_then_close_leaves_the_node_serving(node: MeshdProcess) -> None:
    for cut in (3, 8, 20):
        with socket.create_connection(hostport(node.endpoints["meta"])) as s:
            s.sendall(frame(1, json.dumps(["stat", {"p": "/data/hello.txt"}]).encode())[:cut])
    with socket.create_connection(hostport(node.endpoints["meta"])) as s:  # a frame above the cap
        s.sendall(struct.pack("!II", 1 << 30, 1))
        wait_until(lambda: closed(s), bool, 30, "a 1 GiB frame header did not close the connection")
    assert get(node.endpoints["s3"], "/data/hello.txt") == (200, b"hello\n")


def test_rejections_are_logged_as_lines_not_tracebacks(node: MeshdProcess) -> None:
    # runs last in this module: everything above was rejected somewhere
    log = node.log.read_text()
    assert "Traceback" not in log
    assert log.count("rejected ") >= 5
    assert all(len(line) < 600 for line in log.splitlines()), "a rejection logged a huge line"


async def test_the_wire_client_retries_slow_down_answers(node: MeshdProcess) -> None:
    """A peer or client over the cap gets SlowDown and asks again after a pause: many
    concurrent calls on one connection (cap PIPELINE) all succeed."""
    import asyncio

    from meshd.rpc.wire import WireClient

    w = WireClient(node.endpoints["meta"])
    try:
        results = await asyncio.gather(*(w.call("stat", {"p": "/data/hello.txt"}) for _ in range(50)))
    finally:
        await w.close()
    assert len(results) == 50 and all(r[:5] == results[0][:5] for r in results)  # path, size, mtime, version


# ---- the bounds themselves (meshd.limits, the limits: section of the config) ----------------

def test_parse_int_bounds() -> None:
    from meshd.errors import InvalidArgument
    from meshd.limits import INT64_MAX, parse_int

    assert parse_int("42", "n") == 42 and parse_int(" 7 ", "n") == 7 and parse_int(-1, "n", low=-1) == -1
    assert parse_int(str(INT64_MAX), "n") == INT64_MAX
    for bad in ("9" * 5000, str(INT64_MAX + 1), "1_000", "0x10", "1e3", "", "-1", True, 1.5, None, [1]):
        with pytest.raises(InvalidArgument):
            parse_int(bad, "n")


def test_json_depth_and_loads() -> None:
    from meshd.errors import InvalidArgument
    from meshd.limits import MAX_JSON_DEPTH, json_depth, loads

    assert json_depth(b"[" * 70 + b"]" * 70) == 70
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads(deep, "x") is not None
    with pytest.raises(InvalidArgument, match="deeper"):
        loads(b"[" + deep + b"]", "x")
    # brackets inside strings do not count
    many = json.dumps({"s": "[" * 10_000, "l": [[1]] * 100}).encode()
    assert json_depth(many) == 3 and loads(many, "x")["s"] == "[" * 10_000
    with pytest.raises(InvalidArgument, match="larger"):
        loads(b"[1]", "x", max_bytes=2)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        loads(b"[1", "x")


def test_in_flight_limiter() -> None:
    from meshd.errors import SlowDown
    from meshd.limits import InFlight

    lim = InFlight(2)
    with lim.slot("a"), lim.slot("a"):
        with pytest.raises(SlowDown), lim.slot("a"):
            pass
        with lim.slot("b"):  # another key has its own budget
            pass
    assert lim.counts == {}  # every slot given back


def test_limits_config_keys_are_checked() -> None:
    from meshd.config import from_dict
    from meshd.errors import InvalidArgument

    cfg = from_dict({"limits": {"header_timeout": "5", "max_in_flight_per_client": 10}})
    assert cfg.limits.header_timeout == 5.0 and cfg.limits.max_in_flight_per_client == 10
    for bad in ({"header_timeot": 1}, {"body_timeout": 0}, {"max_in_flight_per_connection": "x"},
                {"tmp_max_age": True}):
        with pytest.raises(InvalidArgument, match="limits"):
            from_dict({"limits": bad})


@pytest.mark.parametrize("how", ["flag", "config"])
def test_an_empty_s3_secret_is_refused_at_start(tmp_path: Path, how: str) -> None:
    """``--s3-secret-key "$SECRET"`` with SECRET unset (or ``""`` in the config file) must
    not start a gateway that accepts requests signed with an empty secret."""
    import subprocess
    import sys

    if how == "flag":
        extra = ["--s3-access-key", "AK", "--s3-secret-key", ""]
    else:
        (tmp_path / "c.yaml").write_text('s3: {access_keys: {AK: ""}}\n')
        extra = ["--config", str(tmp_path / "c.yaml")]
    r = subprocess.run([sys.executable, "-m", "meshd.cli.meshd", "embedded", "--data-dir", str(tmp_path / "d"),
                        *extra], capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert ("--s3-secret-key is empty" if how == "flag" else "empty access key or secret key") in err, err
    assert not (tmp_path / "d" / "endpoints.json").exists()
