"""``meshd``: run a mesh node.

``meshd embedded`` runs a complete single-node mesh in one process, with no
etcd: state in ``--data-dir``, mounts from ``--mount`` (and from earlier
``meshctl mount add``), ports from flags or free ones, published in
``DATA_DIR/endpoints.json``.

``meshd run --etcd URL --cluster NAME --region NAME --data-dir DIR`` runs one
node of a region's cache cluster: it registers in etcd, shares the cluster's
mount table, and owns its share of pages and metadata (see ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import replace
from typing import Any

from meshd import __version__
from meshd.config import NodeConfig, check_cluster, from_dict, load, parse_mount_flag, parse_size
from meshd.errors import InvalidArgument, MeshError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshd", description="Data mesh cache node.")
    p.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embedded", help="run a single-node mesh in one process (no etcd)")
    _node_flags(e)
    r = sub.add_parser("run", help="run one node of a region's cache cluster (membership in etcd)")
    _node_flags(r)
    r.add_argument("--etcd", help="etcd endpoint(s), comma-separated: http://host:2379")
    r.add_argument("--cluster", help="cluster name (etcd keys live under /mesh/NAME/)")
    r.add_argument("--region", help="this node's region")
    r.add_argument("--zone", help="this node's zone within the region")
    r.add_argument("--node-id", help="this node's id (default: generated once into DATA_DIR/node-id)")
    r.add_argument("--advertise-host", help="the address peers and clients reach this node at (default: --host)")
    r.add_argument("--meta-port", type=int, help="metadata wire port (default: a free one)")
    r.add_argument("--lease-ttl", type=int, help="seconds before etcd drops a node that stopped answering (10)")
    r.add_argument("--peer-timeout", type=float,
                   help="seconds a peer may stay silent before it is presumed dead (15); a busy peer "
                   "says 'queued' well within it and is waited for")
    r.add_argument("--cluster-token-file", metavar="FILE",
                   help="the secret nodes present to each other (default: made by the first node, kept in etcd)")
    r.add_argument("--secrets-key-file", metavar="FILE",
                   help="the cluster's key for mount secrets, the same on every node (base64 of 32 bytes, 0600)")
    r.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a node label (repeatable)")
    x = sub.add_parser("scheduler-extender",
                       help="serve kube-scheduler's and Volcano's extender protocols (docs/SCHEDULING.md)")
    x.add_argument("--listen", default="0.0.0.0:8888", help="HOST:PORT to serve on (default 0.0.0.0:8888)")
    x.add_argument("--endpoint", help="a mesh node (gRPC host:port or data directory; default: "
                   "$MESH_ENDPOINT, then the default data directory)")
    x.add_argument("--token-file", metavar="FILE",
                   help="the operator token to present to the mesh (default: $MESH_TOKEN, $MESH_TOKEN_FILE, "
                   "credentials.json beside the node's endpoints.json)")
    x.add_argument("--state", metavar="FILE", help="answer from this fixed state document instead of "
                   "a mesh (a dry run; format in meshd/core/placing.py)")
    x.add_argument("--topology", metavar="FILE", help="use this topology file instead of the mesh's")
    x.add_argument("--ttl", type=float, default=10.0, help="seconds the mesh's answer is reused (10)")
    x.add_argument("--first-wait", type=float, default=0.5,
                   help="seconds a scheduling call waits for a dataset set never seen before (0.5)")
    x.add_argument("--log-level", default="INFO")
    x.add_argument("--tls-cert", help="serve HTTPS with this certificate (with --tls-key)")
    x.add_argument("--tls-key", help="the certificate's key")
    x.add_argument("--tls-ca", help="require client certificates from this CA")
    ct = sub.add_parser("certs", help="make a cluster CA and node/client certificates (docs/TLS.md)")
    cs = ct.add_subparsers(dest="certs_command", required=True)
    ci = cs.add_parser("init", help="create a cluster CA: DIR/ca.pem, DIR/ca.key (0600)")
    ci.add_argument("--dir", required=True, help="directory for the CA (made 0700)")
    ci.add_argument("--name", default="meshd cluster CA", help="the CA's common name")
    ci.add_argument("--days", type=int, default=3650, help="validity in days (3650)")
    ci.add_argument("--force", action="store_true", help="replace an existing CA")
    cis = cs.add_parser("issue", help="issue DIR/NAME.pem and DIR/NAME.key from the CA in DIR")
    cis.add_argument("--dir", required=True, help="the CA's directory (meshd certs init)")
    who = cis.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="a node certificate (serverAuth + clientAuth) with this CN")
    who.add_argument("--client", metavar="NAME", help="a client certificate (clientAuth) with this CN")
    cis.add_argument("--host", default="", help="node: host names and IP addresses it is reached at, "
                     "comma-separated (localhost, 127.0.0.1 and ::1 are always added)")
    cis.add_argument("--days", type=int, default=825, help="validity in days (825)")
    c = sub.add_parser("completion", help="print a shell completion script: source <(meshd completion bash)")
    c.add_argument("shell", choices=["bash"], help="the shell (bash; zsh through bashcompinit)")
    return p


def extender(args: argparse.Namespace) -> int:
    import yaml

    from meshd.client.sdk import MeshClient
    from meshd.servers.extender import serve
    from topology.model import TopologyError
    from topology.model import load as load_topology

    if args.token_file:
        os.environ["MESH_TOKEN_FILE"] = args.token_file
    try:
        topo = load_topology(args.topology) if args.topology else None
    except TopologyError as e:
        print(f"meshd: {e}", file=sys.stderr)
        return 2
    if args.state:
        try:
            with open(args.state, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            print(f"meshd: cannot read the state file {args.state}: {e}", file=sys.stderr)
            return 2

        async def fetch(names: list[str]) -> dict[str, Any]:
            return dict(doc)
    else:
        clients: list[MeshClient] = []  # made on first use: the extender may start before the mesh

        def ask(names: list[str]) -> dict[str, Any]:
            if not clients:
                clients.append(MeshClient(args.endpoint))
            try:
                return clients[0].place_state(names)
            except MeshError:
                clients.pop().close()
                raise

        async def fetch(names: list[str]) -> dict[str, Any]:
            return await asyncio.to_thread(ask, names)

    try:
        ssl_ctx = None
        if args.tls_cert or args.tls_key or args.tls_ca:
            from meshd.config import TlsConfig, check_tls
            from meshd.tls import server_context

            tls = TlsConfig(cert=args.tls_cert or "", key=args.tls_key or "", ca=args.tls_ca or "",
                            client_auth="required" if args.tls_ca else "none")
            check_tls(tls, "flags")
            ssl_ctx = server_context(tls)
        asyncio.run(serve(args.listen, fetch, topo, args.ttl, args.first_wait, ssl_context=ssl_ctx))
    except ValueError as e:
        print(f"meshd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"meshd: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _node_flags(e: argparse.ArgumentParser) -> None:
    e.add_argument("--config", help="YAML configuration file (see CONFIGURATION.md)")
    e.add_argument("--data-dir", help="state directory (default: $MESH_DATA_DIR or ~/.local/share/mesh)")
    e.add_argument("--mount", action="append", default=[], metavar="/PATH=URI[,k=v...]",
                   help="mount an under-store (repeatable)")
    e.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    e.add_argument("--grpc-port", type=int, help="gRPC port (default: a free one)")
    e.add_argument("--http-port", type=int, help="HTTP data/metrics port (default: a free one)")
    e.add_argument("--page-size", help="cache page size, e.g. 4MiB")
    e.add_argument("--memory-capacity", help="memory tier capacity, e.g. 1GiB")
    e.add_argument("--disk-capacity", help="disk tier capacity, e.g. 32GiB")
    e.add_argument("--no-default-mount", action="store_true",
                   help="do not mount DATA_DIR/local-store at /local when no mount exists")
    e.add_argument("--s3-port", type=int, help="S3 gateway port (default: a free one)")
    e.add_argument("--s3-access-key", help="an S3 access key the gateway accepts (with --s3-secret-key)")
    e.add_argument("--s3-secret-key", help="its secret key (prefer the config file: flags show in ps)")
    e.add_argument("--s3-allow-anonymous", action="store_true", default=None,
                   help="accept unsigned S3 requests even when keys are configured")
    e.add_argument("--no-s3", action="store_true", help="do not serve the S3 API")
    e.add_argument("--webhdfs-port", type=int, help="WebHDFS gateway port (default: a free one)")
    e.add_argument("--no-webhdfs", action="store_true", help="do not serve the WebHDFS API")
    e.add_argument("--access", metavar="FILE",
                   help="the access file: tenants, their credentials and path rules (reloaded when it "
                   "changes; THREAT_MODEL.md)")
    e.add_argument("--tls-cert", help="TLS on every TCP port with this node certificate (docs/TLS.md)")
    e.add_argument("--tls-key", help="the node certificate's key")
    e.add_argument("--tls-ca", help="the cluster CA: peers and client certificates are verified against it")
    e.add_argument("--tls-client-auth", choices=["required", "optional", "none"],
                   help="client certificates: required (mutual TLS, the default), optional or none")
    e.add_argument("--log-level", default="INFO")


def certs(args: argparse.Namespace) -> int:
    from meshd.tls import init_ca, issue

    if args.certs_command == "init":
        path = init_ca(args.dir, args.name, args.days, args.force)
        print(f"cluster CA: {path} (key {args.dir}/ca.key, mode 0600: keep it off the nodes "
              "if you can; it issues every identity)")
        return 0
    name = args.name or args.client
    cert, key = issue(args.dir, name, [h for h in args.host.split(",") if h.strip()],
                      client_only=args.client is not None, days=args.days)
    print(f"{'client' if args.client else 'node'} certificate {name}: {cert} (key {key}, mode 0600)")
    return 0


def build_config(args: argparse.Namespace) -> NodeConfig:
    cfg = load(args.config) if args.config else from_dict({})
    cfg = cfg.with_overrides(
        data_dir=args.data_dir, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
        page_size=parse_size(args.page_size, "--page-size") if args.page_size else None,
        memory_capacity=parse_size(args.memory_capacity, "--memory-capacity") if args.memory_capacity else None,
        disk_capacity=parse_size(args.disk_capacity, "--disk-capacity") if args.disk_capacity else None,
        default_mount=False if args.no_default_mount else None,
    )
    if args.access:
        cfg = replace(cfg, auth=replace(cfg.auth, file=args.access))
    if args.mount:
        cfg = cfg.with_overrides(mounts=cfg.mounts + tuple(parse_mount_flag(m) for m in args.mount))
    if (args.s3_access_key is None) != (args.s3_secret_key is None):
        raise InvalidArgument("--s3-access-key and --s3-secret-key go together")
    for flag, value in (("--s3-access-key", args.s3_access_key), ("--s3-secret-key", args.s3_secret_key)):
        if value is not None and not value.strip():  # `--s3-secret-key "$SECRET"` with SECRET unset
            raise InvalidArgument(f"{flag} is empty (an unset shell variable?): give the key, "
                                  "or leave out both --s3-access-key and --s3-secret-key")
    s3 = cfg.s3
    if args.s3_access_key:
        s3 = replace(s3, access_keys={**s3.access_keys, args.s3_access_key: args.s3_secret_key})
    if args.s3_port is not None:
        s3 = replace(s3, port=args.s3_port)
    if args.s3_allow_anonymous:
        s3 = replace(s3, allow_anonymous=True)
    if args.no_s3:
        s3 = replace(s3, enabled=False)
    cfg = replace(cfg, s3=s3)
    if args.webhdfs_port is not None:
        cfg = replace(cfg, webhdfs=replace(cfg.webhdfs, port=args.webhdfs_port))
    if args.no_webhdfs:
        cfg = replace(cfg, webhdfs=replace(cfg.webhdfs, enabled=False))
    if args.tls_cert or args.tls_key or args.tls_ca or args.tls_client_auth:
        from meshd.config import check_tls

        t = cfg.tls
        t = replace(t, cert=args.tls_cert or t.cert, key=args.tls_key or t.key, ca=args.tls_ca or t.ca,
                    client_auth=args.tls_client_auth or t.client_auth)
        check_tls(t, "flags")
        cfg = replace(cfg, tls=t)
    if args.command == "run":
        cc = cfg.cluster
        labels = dict(cc.labels)
        for item in args.label:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise InvalidArgument(f"--label {item!r}: expected KEY=VALUE")
            labels[k] = v
        etcd = tuple(e.strip() for e in args.etcd.split(",") if e.strip()) if args.etcd else cc.etcd
        cc = replace(cc, etcd=etcd, name=args.cluster or cc.name, region=args.region or cc.region,
                     zone=args.zone or cc.zone, node_id=args.node_id or cc.node_id,
                     advertise_host=args.advertise_host or cc.advertise_host, labels=labels,
                     meta_port=args.meta_port if args.meta_port is not None else cc.meta_port,
                     lease_ttl=args.lease_ttl if args.lease_ttl is not None else cc.lease_ttl,
                     peer_timeout=args.peer_timeout if args.peer_timeout is not None else cc.peer_timeout,
                     token_file=args.cluster_token_file or cc.token_file,
                     secrets_key_file=args.secrets_key_file or cc.secrets_key_file)
        if not cc.etcd:
            raise InvalidArgument("meshd run needs --etcd (or cluster.etcd in the config file); "
                                  "for a single node without etcd use `meshd embedded`")
        check_cluster(cc, "meshd run")
        cfg = replace(cfg, cluster=cc)
    elif cfg.cluster.enabled:
        raise InvalidArgument("the config file sets cluster.etcd: start it with `meshd run`, not `meshd embedded`")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "completion":
        from meshd.cli.completion import bash_script

        sys.stdout.write(bash_script(_parser(), "meshd"))
        return 0
    if args.command == "certs":
        try:
            return certs(args)
        except MeshError as e:
            print(f"meshd: {e}", file=sys.stderr)
            return 2
        except ImportError as e:  # a client-only install
            print(f"meshd certs needs the server extra: pip install 'datamesh[server]' ({e})", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "scheduler-extender":
        try:
            return extender(args)
        except MeshError as e:
            print(f"meshd: {e}", file=sys.stderr)
            return 2
    try:
        from meshd.daemon import Daemon
    except ImportError as e:  # a client-only install: `pip install datamesh`
        print(f"meshd: the node needs the server extra: pip install 'datamesh[server]' ({e})", file=sys.stderr)
        return 2
    try:
        cfg = build_config(args)
        asyncio.run(Daemon(cfg).run_forever())
    except MeshError as e:
        print(f"meshd: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
