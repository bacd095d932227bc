"""A bounded fuzz run against ONE real ``meshd embedded`` process: its S3 gateway, its
WebHDFS gateway and its metadata wire, with random input from hypothesis (issue 20).

- S3 and WebHDFS: random methods, paths (``..``, ``%00``, broken percent-encodings,
  non-ASCII, very long), query parameters (the protocols' own names with numbers of
  any size, and garbage), headers and bodies, sent as raw HTTP/1.1 with http.client.
  (tests/test_s3_fuzz.py covers S3's XML bodies, SigV4 and aws-chunked framing in
  depth; here S3 is one front end of three on one node.)
- the metadata wire: frames with a valid length prefix and random JSON (the schema's
  operations with random arguments, random documents, deep nesting, huge numbers),
  invalid JSON and truncated frames.

Whatever the input: never a 500, never a traceback or a path of the node's code in an
answer; every S3 error is S3 XML with a ``<Code>``, every WebHDFS error a
``RemoteException`` JSON; every wire request gets one reply (a result or an error of a
known kind). Afterwards the node still serves normal reads on every front end, and its
log grew by a bounded amount (rejections are rate-limited lines, never tracebacks).

Writes land in ``/scratch``; the file read at the end is in ``/ro``, a read-only mount,
so the fuzz cannot remove it. The run is derandomized (the same requests each CI run)
and bounded: ~3,000 requests, well under a minute.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshd
from meshd.errors import _KINDS
from meshd.rpc.messages import OPS as WIRE_OPS
from tests.meshd_proc import MeshdProcess, hostport, wire_reply

CODE_DIRS = [str(Path(meshd.__file__).resolve().parent.parent).encode(), b'File "', b"Traceback"]
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
# A request line longer than aiohttp's max_line_size (8190) is an HTTP framing error that
# aiohttp answers (400, text) before any front end sees it: the fuzz stays below.
MAX_TARGET = 7000
KEEP = b"kept in a read-only mount\n"
counts = {"s3": 0, "webhdfs": 0, "wire": 0}
statuses: dict[str, set[int]] = {"s3": set(), "webhdfs": set(), "wire": set()}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "ro").mkdir()
    (root / "ro" / "keep.txt").write_bytes(KEEP)
    (root / "scratch" / "dir").mkdir(parents=True)
    (root / "scratch" / "a.txt").write_bytes(b"scratch file\n")
    n = MeshdProcess(root / "data", [f"/ro=file://{root / 'ro'},read_only=true",
                                     f"/scratch=file://{root / 'scratch'}"]).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def log_start(node: MeshdProcess) -> int:
    return node.log.stat().st_size



def send(url: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*hostport(url), timeout=30)
    try:
        # one Host header: two are an HTTP framing error, answered by aiohttp before any front end
        conn.putrequest(method, target, skip_accept_encoding=True,
                        skip_host=any(k.lower() == "host" for k, _ in headers))
        for k, v in headers:
            conn.putheader(k, v)
        if body or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_clean(status: int, body: bytes, what: str) -> None:
    assert status != 500, f"{what}: 500 {body[:300]!r}"
    for marker in CODE_DIRS:
        assert marker not in body, f"{what}: the answer shows the node's code: {body[:300]!r}"


# ---- vocabulary ----------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-(1 << 70), 1 << 70).map(str), st.just("9" * 2000), st.just("1_000"),
                    st.just(" 12"), st.just("0x10"), st.just("-0"), st.just("1e9"), st.just(""))
SAFE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="%#?/"), max_size=20)
TEXT = st.one_of(SAFE, st.text(max_size=30).map(lambda t: quote(t, safe="")),
                 st.sampled_from(["..", ".", "%00", "%ff", "%", "%zz", "a" * 1000, "~", "dir", "a.txt"]))
METHODS = st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "PROPFIND", "MKCOL"])
HEADER_VALUE = st.one_of(NUMBERS, SAFE, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                                max_size=60))
BODY = st.one_of(st.just(b""), st.binary(max_size=300),
                 st.sampled_from([b"<a>", b"<?xml version='1.0'?><Delete><Object><Key>a.txt</Key></Object>"
                                  b"</Delete>", b"[" * 10_000, b'{"a":' * 200, b"\x00" * 100]))


@st.composite
def path_of(draw: st.DrawFn, roots: list[str]) -> str:
    parts = [draw(st.sampled_from(roots)), *draw(st.lists(TEXT, max_size=4))]
    return "/" + "/".join(p for p in parts if p is not None)


def query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" if v is not None else quote(k, safe="")
                    for k, v in pairs)


S3_PARAMS = ["uploads", "uploadId", "partNumber", "max-keys", "list-type", "prefix", "delimiter",
             "continuation-token", "start-after", "marker", "versionId", "acl", "tagging", "delete",
             "location", "max-uploads", "part-number-marker", "max-parts", "encoding-type", "X-Amz-Expires",
             "X-Amz-Date", "X-Amz-Algorithm", "Signature", "Expires", "AWSAccessKeyId", "response-content-type"]
S3_HEADERS = ["Range", "x-amz-content-sha256", "Content-MD5", "x-amz-decoded-content-length", "If-Match",
              "If-None-Match", "If-Modified-Since", "x-amz-copy-source", "x-amz-copy-source-range",
              "x-amz-date", "Authorization", "Content-Type", "x-amz-checksum-crc32", "x-amz-meta-a",
              "Content-Encoding", "x-amz-metadata-directive", "Host"]


@st.composite
def s3_request(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes]:
    path = draw(path_of(["scratch", "ro", "nosuchbucket", ""]))
    params = draw(st.lists(st.tuples(st.sampled_from(S3_PARAMS) | SAFE, NUMBERS | SAFE | st.none()), max_size=4))
    # one of each: a repeated Host or Content-Type is a framing error aiohttp answers itself
    headers = draw(st.lists(st.tuples(st.sampled_from(S3_HEADERS), HEADER_VALUE), max_size=4,
                            unique_by=lambda h: h[0].lower()))
    if draw(st.booleans()) and "Range" not in dict(headers):
        headers.append(("Range", "bytes=" + draw(NUMBERS) + "-" + draw(NUMBERS)))
    target = path + ("?" + query(params) if params else "")
    return draw(METHODS), target[:MAX_TARGET], headers, draw(BODY)


WH_OPS = ["OPEN", "GETFILESTATUS", "LISTSTATUS", "LISTSTATUS_BATCH", "GETCONTENTSUMMARY", "GETFILECHECKSUM",
          "GETHOMEDIRECTORY", "CREATE", "MKDIRS", "RENAME", "SETPERMISSION", "SETREPLICATION", "SETTIMES",
          "APPEND", "CONCAT", "TRUNCATE", "DELETE", "GETXATTRS", "SETXATTR", "CHECKACCESS", "open", "NOPE", ""]
WH_PARAMS = ["offset", "length", "buffersize", "replication", "permission", "blocksize", "user.name",
             "doas", "datanode", "noredirect", "destination", "recursive", "overwrite", "modificationtime",
             "accesstime", "newlength", "sources", "startAfter", "xattr.name", "xattr.value", "flag",
             "fsaction", "delegation"]


@st.composite
def webhdfs_request(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes]:
    path = draw(st.sampled_from(["/webhdfs/v1", "/webhdfs/v2", "/webhdfs", ""])) + draw(
        path_of(["scratch", "ro", "nosuchmount", ""]))
    params = [("op", draw(st.sampled_from(WH_OPS) | SAFE))]
    params += draw(st.lists(st.tuples(st.sampled_from(WH_PARAMS) | SAFE, NUMBERS | SAFE | TEXT),
                            max_size=5))
    if draw(st.booleans()):
        params.append(("destination", draw(path_of(["scratch", "ro", ""]))))
    target = (path + "?" + query(params))[:MAX_TARGET]
    headers = draw(st.lists(st.tuples(st.sampled_from(["Content-Type", "Authorization", "X-Pad"]), HEADER_VALUE),
                            max_size=2, unique_by=lambda h: h[0]))
    return draw(METHODS), target, headers, draw(BODY)


# ---- S3 and WebHDFS --------------------------------------------------------------------

@FUZZ
@given(req=s3_request())
def test_fuzz_s3(node: MeshdProcess, log_start: int, req: tuple[str, str, list[tuple[str, str]], bytes]) -> None:
    method, target, headers, body = req
    status, _, data = send(node.endpoints["s3"], method, target, headers, body)
    counts["s3"] += 1
    statuses["s3"].add(status)
    what = f"S3 {method} {target[:200]}"
    check_clean(status, data, what)
    if status >= 400 and method != "HEAD" and data:
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            raise AssertionError(f"{what}: {status} without S3 XML: {data[:300]!r}") from None
        assert root.tag == "Error" and root.findtext("Code"), f"{what}: {data[:300]!r}"


@FUZZ
@given(req=webhdfs_request())
def test_fuzz_webhdfs(node: MeshdProcess, log_start: int,
                      req: tuple[str, str, list[tuple[str, str]], bytes]) -> None:
    method, target, headers, body = req
    status, _, data = send(node.endpoints["webhdfs"], method, target, headers, body)
    counts["webhdfs"] += 1
    statuses["webhdfs"].add(status)
    what = f"WebHDFS {method} {target[:200]}"
    check_clean(status, data, what)
    if status >= 400 and method != "HEAD":
        try:
            exc = json.loads(data)["RemoteException"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"{what}: {status} without a RemoteException: {data[:300]!r}") from None
        assert exc["exception"] and exc["javaClassName"] and "message" in exc, f"{what}: {data[:300]!r}"


# ---- the metadata wire -----------------------------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 80), 1 << 80), st.floats(), TEXT)
JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4),
                    max_leaves=20)
ARG_KEYS = st.sampled_from(["p", "a", "n", "z", "v", "i", "d", "s", "t", "x"]) | TEXT


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


FRAME_BODY = st.one_of(
    st.just(_encode(["info", {}])),  # a well-formed frame among the others: answered, in order
    st.builds(lambda op, args: _encode([op, args]), st.sampled_from(sorted(WIRE_OPS)) | TEXT,
              st.dictionaries(ARG_KEYS, JSON, max_size=4)),
    st.builds(_encode, JSON),
    st.binary(max_size=200),
    st.integers(65, 3000).map(lambda n: b'["stat", {"p": ' + b"[" * n + b"]" * n + b"}]"),
    st.integers(65, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.just(b'["list", {"p": "/scratch", "n": ' + b"9" * 4000 + b"}]"),
    st.just(b'["list", {"p": "/scratch", "n": ' + b"[1]," * 100_000 + b"1}]"),
)



@settings(FUZZ, max_examples=300)
@given(bodies=st.lists(FRAME_BODY, min_size=1, max_size=6), truncate=st.none() | st.integers(0, 40))
def test_fuzz_wire(node: MeshdProcess, log_start: int, bodies: list[bytes], truncate: int | None) -> None:
    with socket.create_connection(hostport(node.endpoints["meta"]), timeout=30) as s:
        frames = b"".join(struct.pack("!II", len(b), i) + b for i, b in enumerate(bodies, 1))
        if truncate is not None:  # a frame cut short, then the connection closed
            s.sendall(frames[:max(0, len(frames) - 1 - truncate)])
            counts["wire"] += len(bodies)
            return
        s.sendall(frames)
        replies = dict(wire_reply(s) for _ in bodies)
        counts["wire"] += len(bodies)
    assert sorted(replies) == list(range(1, len(bodies) + 1))
    for i, r in replies.items():
        assert ("r" in r) != ("e" in r), r
        statuses["wire"].add(200 if "r" in r else 400)
        if "e" in r:
            assert r["e"] in _KINDS, r
            assert r["e"] != "MeshError" or "internal error" not in str(r.get("m")), (bodies[i - 1][:200], r)
            check_clean(200, str(r.get("m", "")).encode(), f"wire {bodies[i - 1][:100]!r}")


# ---- afterwards --------------------------------------------------------------------------

def test_node_still_serves_and_its_log_is_bounded(node: MeshdProcess, log_start: int) -> None:
    ep = node.endpoints
    assert send(ep["s3"], "GET", "/ro/keep.txt", [], b"")[::2] == (200, KEEP)
    status, headers, _ = send(ep["webhdfs"], "GET", "/webhdfs/v1/ro/keep.txt?op=OPEN", [], b"")
    assert status == 307
    target = urlsplit(headers["location"])
    assert send(ep["webhdfs"], "GET", f"{target.path}?{target.query}", [], b"")[::2] == (200, KEEP)
    with node.client() as c:
        assert c.cat("/ro/keep.txt") == KEEP
    print(f"fuzz: {counts} requests; statuses {statuses}")
    # the fuzz reached the handlers: successes and refusals on every front end
    for front in ("s3", "webhdfs"):
        assert any(200 <= s < 300 for s in statuses[front]) and any(400 <= s < 500 for s in statuses[front]) \
            and len(statuses[front]) >= 3, statuses
    assert statuses["wire"] == {200, 400}, statuses
    total = sum(counts.values())
    assert total >= 2000, counts  # the run really was a few thousand requests
    grown = node.log.stat().st_size - log_start
    log = node.log.read_text()
    assert "Traceback" not in log
    assert grown < 64 * 1024 * total / 1000, f"the log grew {grown} bytes for {total} requests"
