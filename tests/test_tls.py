"""TLS on every TCP listener (docs/TLS.md): real ``meshd certs``, real nodes, real clients.

An embedded node with a certificate from a CA made by ``meshd certs``, requiring
client certificates (mutual TLS): meshctl, the HTTP data port, S3 (boto3), WebHDFS,
gRPC and the metadata wire (``mesh://`` through fsspec) all work with a client
certificate from that CA, and refuse at the handshake a plain-text client, a
client without a certificate and one whose certificate comes from another CA.
A 2-node cluster (real etcd) with mutual TLS between its nodes reads a file
whose pages and metadata are owned by the other node. ``peer_identity`` reports
the CN of a verified client certificate on aiohttp, the wire and gRPC.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import fsspec
import grpc
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError
from botocore.exceptions import SSLError as BotoSSLError

from meshd.client.base import NodeUnreachable
from meshd.client.sdk import MeshClient
from meshd.config import TlsConfig, from_dict
from meshd.errors import InvalidArgument, NodeUnavailable
from meshd.rpc.wire import SyncWireClient, WireServer
from meshd.tls import ClientTLS, find_client_tls, peer_identity, server_context
from tests.conftest import cluster_args, wait_members
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MESHCTL, MESHD, MeshdProcess

MiB = 1 << 20
ACCESS, SECRET = "tlskey", "tls-secret-key"


def certs(*args: str) -> str:
    r = subprocess.run([*MESHD, "certs", *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cluster CA with two node certificates and a client certificate, and a second
    CA (another cluster's) with its own client and node certificates."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = root / "ca", root / "other"
    certs("init", "--dir", str(ca))
    certs("issue", "--dir", str(ca), "--name", "node-a", "--host", "localhost,127.0.0.1")
    certs("issue", "--dir", str(ca), "--name", "node-b", "--host", "127.0.0.1")
    certs("issue", "--dir", str(ca), "--client", "alice")
    certs("init", "--dir", str(other), "--name", "another CA")
    certs("issue", "--dir", str(other), "--client", "mallory")
    certs("issue", "--dir", str(other), "--name", "rogue", "--host", "127.0.0.1")
    return {"ca": ca, "other": other}


def tls_args(pki: dict[str, Path], node: str = "node-a") -> list[str]:
    ca = pki["ca"]
    return ["--tls-cert", str(ca / f"{node}.pem"), "--tls-key", str(ca / f"{node}.key"),
            "--tls-ca", str(ca / "ca.pem")]


@pytest.fixture(scope="module")
def node(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    d = tmp_path_factory.mktemp("tlsnode") / "data"
    p = MeshdProcess(d, [], [*tls_args(pki), "--s3-access-key", ACCESS, "--s3-secret-key", SECRET]).start()
    (d / "local-store" / "seed.bin").write_bytes(b"seed " * 1000)
    yield p
    p.stop()


@pytest.fixture
def alice_env(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process clients (and meshctl children) present alice's certificate."""
    ca = pki["ca"]
    monkeypatch.setenv("MESH_TLS_CA", str(ca / "ca.pem"))
    monkeypatch.setenv("MESH_TLS_CERT", str(ca / "alice.pem"))
    monkeypatch.setenv("MESH_TLS_KEY", str(ca / "alice.key"))
    monkeypatch.setenv("MESH_SHORT_CIRCUIT", "0")  # bytes over HTTPS, not the local socket


def alice(pki: dict[str, Path]) -> tuple[str, str]:
    return str(pki["ca"] / "alice.pem"), str(pki["ca"] / "alice.key")


def mallory(pki: dict[str, Path]) -> tuple[str, str]:
    return str(pki["other"] / "mallory.pem"), str(pki["other"] / "mallory.key")


# ---- meshd certs -------------------------------------------------------------------------


def test_certs_init_and_issue_make_private_keys_and_the_right_certificates(pki: dict[str, Path]) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = pki["ca"]
    for key in ("ca.key", "node-a.key", "alice.key"):
        assert stat.S_IMODE(os.stat(ca / key).st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(ca).st_mode) == 0o700
    node_cert = x509.load_pem_x509_certificate((ca / "node-a.pem").read_bytes())
    usages = node_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert node_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a"
    client_cert = x509.load_pem_x509_certificate((ca / "alice.pem").read_bytes())
    usages = client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # the CA is not replaced by accident, and issuing needs one
    r = subprocess.run([*MESHD, "certs", "init", "--dir", str(ca)], capture_output=True, timeout=60)
    assert r.returncode == 2 and b"already there" in r.stderr, r.stderr
    r = subprocess.run([*MESHD, "certs", "issue", "--dir", str(ca.parent / "none"), "--name", "x"],
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"meshd certs init" in r.stderr, r.stderr


def test_certs_without_the_server_extra_names_it(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['cryptography'] = None\nfrom meshd.cli.meshd import main\n"
            f"sys.exit(main(['certs', 'init', '--dir', {str(tmp_path / 'ca')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pip install 'datamesh[server]'" in r.stderr and "Traceback" not in r.stderr


def test_a_node_refuses_a_tls_config_it_cannot_use(pki: dict[str, Path], tmp_path: Path) -> None:
    ca = pki["ca"]
    r = subprocess.run([*MESHD, "embedded", "--data-dir", str(tmp_path / "d"), "--tls-cert",
                        str(ca / "node-a.pem"), "--tls-key", str(ca / "node-a.key")],
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"needs tls.ca" in r.stderr, r.stderr
    r = subprocess.run([*MESHD, "embedded", "--data-dir", str(tmp_path / "d"), "--tls-cert",
                        str(ca / "node-a.pem"), "--tls-key", str(ca / "alice.key"), "--tls-ca", str(ca / "ca.pem")],
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"cannot load certificate" in r.stderr, r.stderr
    with pytest.raises(InvalidArgument, match="client_auth must be required, optional or none"):
        from_dict({"tls": {"cert": "a", "key": "b", "client_auth": "maybe"}})
    with pytest.raises(InvalidArgument, match="unknown key"):
        from_dict({"tls": {"certificate": "a"}})


# ---- an embedded node with mutual TLS ------------------------------------------------------


def test_endpoints_say_tls_and_the_ca_is_beside_them(node: MeshdProcess, pki: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MESH_TLS_CA", "MESH_TLS_CERT", "MESH_TLS_KEY", "MESH_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    ep = node.endpoints
    assert ep["tls"] == "required"
    for name in ("http", "s3", "webhdfs", "metrics"):
        assert ep[name].startswith("https://"), ep
    assert (node.data_dir / "tls" / "ca.pem").read_bytes() == (pki["ca"] / "ca.pem").read_bytes()
    found = find_client_tls(str(node.data_dir))
    assert found is not None and found.ca == str(node.data_dir / "tls" / "ca.pem")


def test_meshctl_reads_and_writes_over_tls(node: MeshdProcess, pki: dict[str, Path]) -> None:
    cert, key = alice(pki)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    base = [*MESHCTL, "--endpoint", str(node.data_dir), "--tls-cert", cert, "--tls-key", key]
    data = os.urandom(3 * MiB + 17)
    r = subprocess.run([*base, "cp", "-", "mesh:/local/ctl.bin"], input=data, capture_output=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([*base, "cat", "/local/ctl.bin"], capture_output=True, timeout=120,
                       env={**env, "MESH_SHORT_CIRCUIT": "0"})
    assert r.returncode == 0 and r.stdout == data, r.stderr.decode()
    r = subprocess.run([*base, "ls", "/local"], capture_output=True, timeout=120, env=env)
    assert r.returncode == 0 and b"ctl.bin" in r.stdout, r.stderr.decode()
    # the same meshctl without a client certificate is refused by a node that requires one
    r = subprocess.run([*MESHCTL, "--endpoint", str(node.data_dir), "ls", "/local"], capture_output=True,
                       timeout=120, env=env)
    assert r.returncode != 0 and b"unreachable" in r.stderr, r.stderr.decode()
    assert b"Traceback" not in r.stderr


def test_http_data_port_over_tls(node: MeshdProcess, pki: dict[str, Path]) -> None:
    ca = str(pki["ca"] / "ca.pem")
    url = node.http + "/v1/files/local/http.bin"
    data = os.urandom(2 * MiB + 5)
    r = requests.put(url, data=data, verify=ca, cert=alice(pki), timeout=60)
    assert r.status_code == 201 and r.json()["size"] == len(data), r.text
    r = requests.get(url, verify=ca, cert=alice(pki), timeout=60)
    assert r.status_code == 200 and r.content == data
    r = requests.get(node.http + "/v1/files/local/seed.bin?offset=5&length=10", verify=ca, cert=alice(pki),
                     timeout=60)
    assert r.content == (b"seed " * 1000)[5:15]
    assert requests.get(node.endpoints["metrics"], verify=ca, cert=alice(pki), timeout=60).ok


def test_plain_text_and_foreign_clients_are_refused_at_the_handshake(node: MeshdProcess,
                                                                    pki: dict[str, Path]) -> None:
    ca = str(pki["ca"] / "ca.pem")
    url = node.http + "/v1/files/local/seed.bin"
    for port_url in (node.http, node.endpoints["s3"], node.endpoints["webhdfs"]):
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to a TLS port
            requests.get(port_url.replace("https://", "http://") + "/", timeout=10)
        # TLS 1.3: the node refuses the client's certificate after the client's side of the
        # handshake is done, so the client sees an alert (SSLError) or the connection closed
        with pytest.raises(requests.exceptions.ConnectionError):  # no client certificate
            requests.get(port_url + "/", verify=ca, timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):  # a certificate from another CA
            requests.get(port_url + "/", verify=ca, cert=mallory(pki), timeout=10)
        assert requests.get(port_url + "/", verify=ca, cert=alice(pki), timeout=10).status_code < 500
    with pytest.raises(requests.exceptions.SSLError):  # the node is not trusted without the CA
        requests.get(url, cert=alice(pki), timeout=10)
    # the metadata wire: plain text, no certificate, another CA's certificate
    meta = node.endpoints["meta"]
    foreign = ClientTLS(ca, *mallory(pki))
    for ctx in (None, ClientTLS(ca).context(), foreign.context()):
        with pytest.raises(NodeUnavailable):
            SyncWireClient(meta, timeout=10, ssl_context=ctx).call("info", {})
    assert SyncWireClient(meta, 10, ClientTLS(ca, *alice(pki)).context()).call("info", {})["node_id"]
    # gRPC: the SDK with no TLS, without a certificate, with another CA's
    for tls in (None, ClientTLS(ca), foreign):
        with pytest.raises(NodeUnreachable):
            MeshClient(node.endpoint, timeout=10, tls=tls)
    with MeshClient(node.endpoint, timeout=10, tls=ClientTLS(ca, *alice(pki))) as c:
        assert c.node_id == node.endpoints["node_id"]
    # a node certificate of another cluster is no better than a client's
    rogue = ClientTLS(ca, str(pki["other"] / "rogue.pem"), str(pki["other"] / "rogue.key"))
    with pytest.raises(NodeUnavailable):
        SyncWireClient(meta, 10, rogue.context()).call("info", {})


def test_s3_over_tls(node: MeshdProcess, pki: dict[str, Path]) -> None:
    ca = str(pki["ca"] / "ca.pem")

    def client(cert: tuple[str, str] | None) -> object:
        conf = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"},
                      client_cert=cert)
        return boto3.client("s3", endpoint_url=node.endpoints["s3"], aws_access_key_id=ACCESS,
                            aws_secret_access_key=SECRET, region_name="us-east-1", config=conf, verify=ca)

    s3 = client(alice(pki))
    s3.put_object(Bucket="local", Key="s3/obj.bin", Body=b"over tls" * 1000)  # type: ignore[attr-defined]
    got = s3.get_object(Bucket="local", Key="s3/obj.bin")["Body"].read()  # type: ignore[attr-defined]
    assert got == b"over tls" * 1000
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="local", Prefix="s3/")["Contents"]]  # type: ignore[attr-defined]
    assert keys == ["s3/obj.bin"]
    for cert in (None, mallory(pki)):
        with pytest.raises((BotoSSLError, ConnectionClosedError)):
            client(cert).get_object(Bucket="local", Key="s3/obj.bin")  # type: ignore[attr-defined]


def test_webhdfs_over_tls(node: MeshdProcess, pki: dict[str, Path]) -> None:
    ca, cert = str(pki["ca"] / "ca.pem"), alice(pki)
    base = node.endpoints["webhdfs"] + "/webhdfs/v1/local/hdfs/w.txt"
    r = requests.put(base + "?op=CREATE&user.name=alice", verify=ca, cert=cert, allow_redirects=False, timeout=60)
    assert r.status_code == 307 and r.headers["Location"].startswith("https://"), (r.status_code, r.headers)
    r = requests.put(r.headers["Location"], data=b"hdfs bytes", verify=ca, cert=cert, timeout=60)
    assert r.status_code == 201, r.text
    r = requests.get(base + "?op=OPEN&user.name=alice", verify=ca, cert=cert, timeout=60)  # follows the 307
    assert r.status_code == 200 and r.content == b"hdfs bytes"
    r = requests.get(base + "?op=GETFILESTATUS&user.name=alice", verify=ca, cert=cert, timeout=60)
    assert r.json()["FileStatus"]["length"] == len(b"hdfs bytes")


def test_sdk_and_fsspec_over_tls(node: MeshdProcess, alice_env: None) -> None:
    """mesh:// through fsspec: gRPC, the metadata wire and HTTPS data, TLS found from the
    environment; the node's address alone is enough."""
    data = os.urandom(MiB + 3)
    fs = fsspec.filesystem("mesh", endpoint=node.endpoint, skip_instance_cache=True)
    with fs.open("/local/fs/a.bin", "wb") as f:
        f.write(data)
    with fs.open("/local/fs/a.bin", "rb") as f:
        assert f.read() == data
    assert fs.ls("/local/fs", detail=False) == ["/local/fs/a.bin"]
    assert fs.info("/local/fs/a.bin")["size"] == len(data)
    with MeshClient(node.endpoint) as c:
        assert c._ssl is not None
        assert c.cat("/local/seed.bin") == b"seed " * 1000
        assert c.report()["mounts"] >= 1  # the report: over the metadata wire


def test_meshfs_over_tls(node: MeshdProcess, pki: dict[str, Path], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """meshfs with --tls-* flags: its gRPC and metadata-wire calls go over mutual TLS
    (bytes through the local socket, which TLS leaves alone)."""
    from tests.fuse_proc import MeshfsProcess

    for var in ("MESH_TLS_CA", "MESH_TLS_CERT", "MESH_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    cert, key = alice(pki)
    mnt = tmp_path / "mnt"
    fs = MeshfsProcess(mnt, node.endpoint, ["--tls-ca", str(pki["ca"] / "ca.pem"), "--tls-cert", cert,
                                            "--tls-key", key]).start()
    try:
        assert (mnt / "local" / "seed.bin").read_bytes() == b"seed " * 1000
        (mnt / "local" / "fuse.txt").write_bytes(b"through meshfs")
        assert b"fuse.txt" in subprocess.run([*MESHCTL, "--endpoint", str(node.data_dir), "--tls-cert", cert,
                                              "--tls-key", key, "ls", "/local"],
                                             capture_output=True, timeout=60).stdout
    finally:
        assert fs.stop() == 0
    with pytest.raises(RuntimeError, match="did not mount"):  # without a client certificate
        MeshfsProcess(tmp_path / "mnt2", node.endpoint, ["--tls-ca", str(pki["ca"] / "ca.pem")]).start()


def test_sdk_finds_tls_beside_endpoints_json(node: MeshdProcess, pki: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No environment: the data directory's endpoints.json says TLS, tls/ca.pem verifies the
    node, and tls/client.pem (put there by the operator) is the client's certificate."""
    for var in ("MESH_TLS_CA", "MESH_TLS_CERT", "MESH_TLS_KEY", "MESH_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    tls_dir = node.data_dir / "tls"
    with pytest.raises(NodeUnreachable):  # no client certificate there yet
        MeshClient(str(node.data_dir), timeout=10)
    cert, key = alice(pki)
    (tls_dir / "client.pem").write_bytes(Path(cert).read_bytes())
    (tls_dir / "client.key").write_bytes(Path(key).read_bytes())
    try:
        with MeshClient(str(node.data_dir), timeout=10) as c:
            assert c.stat("/local/seed.bin").size == 5000
    finally:
        (tls_dir / "client.pem").unlink()
        (tls_dir / "client.key").unlink()


def test_scheduler_extender_over_tls(pki: dict[str, Path]) -> None:
    from tests.etcdproc import end_process

    ca = pki["ca"]
    proc = subprocess.Popen([*MESHD, "scheduler-extender", "--listen", "127.0.0.1:0", "--state",
                             str(Path(__file__).parent.parent / "examples" / "jobs" / "state.yaml"),
                             "--tls-cert", str(ca / "node-a.pem"), "--tls-key", str(ca / "node-a.key"),
                             "--tls-ca", str(ca / "ca.pem")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on https://" in line, line
        url = line.strip().rsplit(" ", 1)[1] + "/healthz"
        assert requests.get(url, verify=str(ca / "ca.pem"), cert=alice(pki), timeout=10).status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=str(ca / "ca.pem"), timeout=10)
    finally:
        end_process(proc, graceful=True)  # type: ignore[arg-type]


# ---- peer identity -------------------------------------------------------------------------


def test_peer_identity_names_the_verified_client(pki: dict[str, Path]) -> None:
    ca = pki["ca"]
    cfg = TlsConfig(cert=str(ca / "node-a.pem"), key=str(ca / "node-a.key"), ca=str(ca / "ca.pem"),
                    client_auth="optional")
    seen: dict[str, object] = {}

    async def run() -> None:
        from aiohttp import web

        from meshd.tls import grpc_server_credentials

        async def who(request: web.Request) -> web.Response:
            return web.Response(text=str(peer_identity(request)))

        app = web.Application()
        app.router.add_get("/who", who)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cfg))
        await site.start()
        port = runner.addresses[0][1]

        wire = WireServer({"who": lambda args: asyncio.sleep(0, [p.cert_cn for p in wire._live])},
                          ssl_context=server_context(cfg))
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.setblocking(False)
        wport = s.getsockname()[1]
        await wire.start(s)

        def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return str(peer_identity(context)).encode()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "t", {"who": grpc.unary_unary_rpc_method_handler(whoami)})])
        gport = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(
            TlsConfig(cert=cfg.cert, key=cfg.key, ca=cfg.ca, client_auth="required")))
        await server.start()

        def clients() -> None:
            cafile = str(ca / "ca.pem")
            seen["http"] = requests.get(f"https://127.0.0.1:{port}/who", verify=cafile, cert=alice(pki),
                                        timeout=10).text
            seen["http-anonymous"] = requests.get(f"https://127.0.0.1:{port}/who", verify=cafile, timeout=10).text
            seen["wire"] = SyncWireClient(f"127.0.0.1:{wport}", 10,
                                          ClientTLS(cafile, *alice(pki)).context()).call("who", {})
            creds = ClientTLS(cafile, *alice(pki)).grpc_credentials()
            with grpc.secure_channel(f"127.0.0.1:{gport}", creds) as ch:
                seen["grpc"] = ch.unary_unary("/t/who")(b"", timeout=10).decode()

        try:
            await asyncio.to_thread(clients)
        finally:
            await server.stop(0)
            await wire.stop()
            await runner.cleanup()

    asyncio.run(run())
    assert seen == {"http": "alice", "http-anonymous": "None", "wire": ["alice"], "grpc": "alice"}


# ---- a 2-node cluster with mutual TLS ------------------------------------------------------


def test_two_node_cluster_with_mutual_tls(pki: dict[str, Path], tmp_path: Path, alice_env: None) -> None:
    store = tmp_path / "store"
    store.mkdir()
    data = os.urandom(24 * MiB + 99)
    (store / "big.bin").write_bytes(data)
    for i in range(20):
        (store / f"small-{i:02d}").write_bytes(b"y" * i)
    etcd = EtcdProcess(tmp_path / "etcd").start()
    nodes: list[MeshdProcess] = []
    try:
        for i, name in enumerate(("node-a", "node-b")):
            nodes.append(MeshdProcess(tmp_path / f"n{i}", [], [*cluster_args(etcd), "--page-size", "1MiB",
                                                              *tls_args(pki, name)], command="run").start())
        wait_members(nodes, 2)
        r = nodes[0].ctl("mount", "add", "/data", f"file://{store}")
        assert r.returncode == 0, r.stderr.decode()
        digest = hashlib.sha256(data).hexdigest()
        for n in nodes:
            # every read through this one node: the pages the other owns come over mutual TLS
            with MeshClient(n.endpoint, route=False) as c:
                assert hashlib.sha256(c.cat("/data/big.bin")).hexdigest() == digest
                assert len(c.ls("/data")) == 21
        reports = []
        for n in nodes:
            with n.client() as c:
                reports.append(c.report())
        pages = [r["tiers"]["memory"]["pages"] for r in reports]
        assert sum(pages) == 25 and all(p > 0 for p in pages), pages  # each page once, at its owner
        assert sum(r["metadata_forwarded"] for r in reports) > 0  # the metadata wire between nodes
        members = reports[0]["cluster"]["members"]
        assert {m["state"] for m in members} == {"self", "up"}  # each asked over the wire, mutual TLS
        with nodes[1].client() as c:
            assert len(c.members) == 2 and all(m["http"].startswith("https://") for m in c.members)
        # a node with a certificate from another CA is no peer: its calls are refused
        meta = nodes[0].endpoints["meta"]
        rogue = ClientTLS(str(pki["ca"] / "ca.pem"), str(pki["other"] / "rogue.pem"),
                          str(pki["other"] / "rogue.key"))
        with pytest.raises(NodeUnavailable):
            SyncWireClient(meta, 10, rogue.context()).call("info", {})
        r = nodes[0].ctl("report", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["cluster"]["members"], r.stderr.decode()
    finally:
        for n in nodes:
            n.stop()
        etcd.kill()


def test_plain_clients_are_unchanged_without_tls(meshd: Callable[..., MeshdProcess],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MESH_TLS_CA", "MESH_TLS_CERT", "MESH_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    p = meshd()
    assert "tls" not in p.endpoints and p.http.startswith("http://")
    assert find_client_tls(str(p.data_dir)) is None
    with MeshClient(str(p.data_dir)) as c:
        assert c._ssl is None and c.cat("/local/hello.txt")
    assert not (p.data_dir / "tls").exists()
    assert find_client_tls(p.endpoint) is None  # a bare address: plain text
    assert find_client_tls("grpcs://" + p.endpoint) is not None  # unless it says grpcs://


def test_a_client_certificate_is_an_identity(pki: dict[str, Path], tmp_path: Path) -> None:
    """A verified client certificate is its holder's credential: a tenant's when its CN is
    listed under one in the access file, else an operator's (the CA is the operator's).
    It decides before the connection's local user does: the test runs as the node's user."""
    ca = pki["ca"]
    certs("issue", "--dir", str(ca), "--client", "carol")
    access = tmp_path / "access.yaml"
    access.write_text("tenants:\n  team:\n    certificates: [alice]\n"
                      "    rules: [{path: /local, allow: read}]\n")
    p = MeshdProcess(tmp_path / "data", [], [*tls_args(pki), "--access", str(access)]).start()
    try:
        (tmp_path / "data" / "local-store" / "seed.bin").write_bytes(b"seed")
        verify, url = str(ca / "ca.pem"), p.http + "/v1/files/local/"
        carol = (str(ca / "carol.pem"), str(ca / "carol.key"))
        assert requests.get(url + "seed.bin", verify=verify, cert=alice(pki), timeout=60).content == b"seed"
        r = requests.put(url + "by-alice.bin", data=b"x", verify=verify, cert=alice(pki), timeout=60)
        assert r.status_code == 403 and r.json()["error"] == "PermissionDenied", r.text
        r = requests.put(url + "by-carol.bin", data=b"x", verify=verify, cert=carol, timeout=60)
        assert r.status_code == 201, r.text
        assert not (tmp_path / "data" / "local-store" / "by-alice.bin").exists()
    finally:
        p.stop()
