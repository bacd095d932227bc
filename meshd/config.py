"""Node configuration: small frozen objects with named defaults.

Loaded from a YAML file (``meshd embedded --config FILE``), then overridden by
command-line flags. Unknown keys are refused with the key's name, so a typo
never silently falls back to a default. Sizes accept integers or strings with
a binary unit (``4MiB``, ``512M``, ``16GiB``). Every key is documented in
CONFIGURATION.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

from meshd.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 4 << 20
DEFAULT_MEMORY_CAPACITY = 1 << 30
DEFAULT_DISK_CAPACITY = 32 << 30
DEFAULT_HIGH_WATERMARK = 0.9
DEFAULT_LOW_WATERMARK = 0.8
DEFAULT_READAHEAD_PAGES = 16
DEFAULT_LOAD_PARALLELISM = 8
DEFAULT_WRITE_BEHIND = 256 << 20
DEFAULT_VERIFY_WINDOW = 10.0  # seconds (docs/SEMANTICS.md, "Integrity of cached pages")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
          "tib": 1 << 40}


def parse_size(value: Any, name: str = "size") -> int:
    """``4MiB`` -> 4194304. Units are binary (K = KiB)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{name}: size may not be negative")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgument(f"{name}: cannot parse size {value!r} (examples: 4194304, 4MiB, 16GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_bool(value: Any, name: str) -> bool:
    """A YAML boolean (true/false, yes/no, on/off, 1/0), strictly: "false" is not True."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise InvalidArgument(f"{name}: expected true or false, got {value!r}")


WRITE_MODES = {"back": True, "through": False}
# what the node's own HTTP API (PUT /v1/files?writeback=) has taken besides
_WRITE_MODE_ALIASES = {**{k: True for k in ("writeback", "write-back", "1", "true", "yes", "on")},
                       **{k: False for k in ("writethrough", "write-through", "0", "false", "no", "off")}}


def parse_write_mode(value: str | None, *, aliases: bool = False) -> bool | None:
    """The write mode a request asks for (the mesh's extension of each protocol: S3's
    ``x-mesh-write-mode`` header, WebHDFS's ``writemode``, meshfs's ``--write-mode``,
    ``mesh://``'s ``write_mode``): ``back`` (True: acknowledged once durable on the node,
    uploaded in the background) or ``through`` (False: once in the under-store); None when
    not given (the mount's ``write_mode``). ``aliases``: also the node API's spellings
    (1/true/on, 0/false/off). InvalidArgument for anything else."""
    if value is None or value == "":
        return None
    v = value.strip().lower()
    found = WRITE_MODES.get(v, _WRITE_MODE_ALIASES.get(v) if aliases else None)
    if found is None:
        raise InvalidArgument(f"write mode must be 'back' or 'through', not {value!r}")
    return found


def default_data_dir() -> str:
    return os.environ.get("MESH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mesh")


@dataclass(frozen=True)
class CacheConfig:
    page_size: int = DEFAULT_PAGE_SIZE
    memory_capacity: int = DEFAULT_MEMORY_CAPACITY
    disk_capacity: int = DEFAULT_DISK_CAPACITY
    high_watermark: float = DEFAULT_HIGH_WATERMARK
    low_watermark: float = DEFAULT_LOW_WATERMARK
    readahead_pages: int = DEFAULT_READAHEAD_PAGES
    load_parallelism: int = DEFAULT_LOAD_PARALLELISM
    write_behind: int = DEFAULT_WRITE_BEHIND  # bytes of fetched pages queued for the cache disk
    verify: bool = True  # check each disk page's CRC-32C on every serve (else on first use and change)
    verify_window: float = DEFAULT_VERIFY_WINDOW  # s: a check also covers serves of the unchanged file


@dataclass(frozen=True)
class S3Config:
    """The S3 gateway (gateway/). ``allow_anonymous=None`` means: anonymous only
    while no access key is configured (a first try), announced loudly at start."""

    enabled: bool = True
    port: int = 0
    access_keys: dict[str, str] = field(default_factory=dict)  # access key -> secret key
    allow_anonymous: bool | None = None
    domains: tuple[str, ...] = ("localhost",)  # virtual-hosted style: BUCKET.<domain>
    multipart_expiry: float = 7 * 86400  # seconds before an abandoned upload is removed

    @property
    def anonymous(self) -> bool:
        return (not self.access_keys) if self.allow_anonymous is None else self.allow_anonymous


@dataclass(frozen=True)
class WebHdfsConfig:
    """The WebHDFS gateway (gateway/webhdfs.py). Hadoop's simple auth: the caller names
    itself with ``user.name``. ``users`` empty: every user may read and write; else only
    the users listed, each ``rw`` or ``ro``. Without ``user.name`` a request acts as
    ``anonymous_user`` (Hadoop's static web user), unless ``allow_anonymous`` is off;
    it may not write once any credential is configured. ``doas`` (acting as another
    user) is only for the ``proxy_users``."""

    enabled: bool = True
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)  # user -> "rw" | "ro"
    allow_anonymous: bool = True
    anonymous_user: str = "dr.who"
    # Users who may act as another with ``doas`` (Hadoop's proxy users); nobody else may.
    proxy_users: tuple[str, ...] = ()
    # Writes without user.name: None = allowed only while no credential is configured
    # (no S3 access key, no WebHDFS user); meshd resolves it at start-up.
    anonymous_writes: bool | None = None
    block_size: int = 128 << 20  # reported in file statuses (HDFS's default), and the checksum's block


@dataclass(frozen=True)
class AuthConfig:
    """Who may use the node (meshd/auth/, THREAT_MODEL.md). ``file``: the access file
    (tenants, their tokens, S3 keys, WebHDFS users and path rules; operator tokens),
    read again whenever it changes."""

    file: str = ""
    # false: every request acts as an operator, as before identities existed. For measuring
    # what authentication costs (bench/), never for a node others can reach.
    enforce: bool = True


@dataclass(frozen=True)
class MountConfig:
    path: str
    uri: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster mode (``meshd run``): membership, mount table and cluster settings in etcd."""

    etcd: tuple[str, ...] = ()  # etcd endpoints, http://host:port
    name: str = ""  # the cluster; etcd keys live under /mesh/<name>/
    region: str = ""
    zone: str = ""
    node_id: str = ""  # default: DATA_DIR/node-id (generated once)
    advertise_host: str = ""  # the address peers and clients use (default: host)
    capacity: int = 0  # announced cache capacity (default: the disk tier's)
    labels: dict[str, str] = field(default_factory=dict)
    lease_ttl: int = 10  # seconds without keep-alive before etcd drops a dead node
    # Seconds a peer may stay silent (no page, no "queued" answer) before it is presumed
    # dead and the next owner asked. A peer that answers is never given up on, however
    # long its queue: it answers "queued" every peer_timeout / 3 seconds (at most 5).
    peer_timeout: float = 15.0
    meta_port: int = 0  # the metadata wire's port (0: a free one)
    # The secret nodes present to each other. Empty: the first node makes one and keeps
    # it in etcd (whoever can read etcd's /mesh/<cluster>/ is trusted anyway).
    token_file: str = ""
    # The key sealing the mount table's inline secrets (base64 of 32 bytes, 0600), the same
    # file on every node; without it inline secrets are refused (meshd/secrets.py).
    secrets_key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.etcd)


@dataclass(frozen=True)
class TlsConfig:
    """TLS on every TCP listener (docs/TLS.md). ``cert``/``key``: this node's certificate
    (serverAuth + clientAuth: it is also its peers' client); ``ca``: the cluster CA that
    peers' and clients' certificates are verified against; ``client_auth``: a client
    certificate is ``required`` (mutual TLS), ``optional`` or ``none``. Off without ``cert``."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    client_auth: str = "required"

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


def check_tls(cfg: TlsConfig, where: str = "config") -> None:
    if cfg.client_auth not in ("required", "optional", "none"):
        raise InvalidArgument(f"{where}: tls.client_auth must be required, optional or none, "
                              f"got {cfg.client_auth!r}")
    if (cfg.cert or cfg.key or cfg.ca) and not (cfg.cert and cfg.key):
        raise InvalidArgument(f"{where}: tls needs both cert and key (and ca for peers and client certificates)")
    if cfg.enabled and cfg.client_auth != "none" and not cfg.ca:
        raise InvalidArgument(f"{where}: tls.client_auth {cfg.client_auth} needs tls.ca (the CA client "
                              "certificates are verified against); or set client_auth: none")


@dataclass(frozen=True)
class LimitsConfig:
    """What one client may hold of a node (meshd.limits, meshd.servers.guard): every
    HTTP listener and the metadata wire cut slow senders, and cap requests in flight."""

    header_timeout: float = 30.0  # seconds from a request's first byte to its complete head (a wire frame: whole)
    body_timeout: float = 60.0  # seconds without a byte while a request body is awaited
    keepalive_timeout: float = 75.0  # seconds an idle keep-alive HTTP connection is kept
    max_in_flight_per_connection: int = 1024  # metadata wire requests pipelined on one connection
    max_in_flight_per_client: int = 4096  # requests in flight per client (remote address), per listener
    max_in_flight_per_tenant: int = 4096  # requests in flight per tenant, across every listener
    tmp_max_age: float = 3600.0  # seconds before a .mesh-tmp-* file of a file:// store counts as crashed
    tmp_sweep_interval: float = 600.0  # seconds between sweeps of those files (0: only at start-up)


@dataclass(frozen=True)
class WritebackConfig:
    """Write-back (docs/SEMANTICS.md): writes acknowledged once on this node's disk."""

    dir: str = ""  # spool directory ("": DATA_DIR/writeback); on a disk with room for the budget
    budget: int = 8 << 30  # bytes acknowledged but not yet uploaded, at most: writers wait beyond
    parallel: int = 4  # files uploaded at once
    parts: int = 4  # parts of one S3 multipart upload in flight
    retain: float = 30.0  # seconds an uploaded spool file still serves readers pinned to it
    retry_max: float = 60.0  # the longest wait between two attempts of a failing upload
    replicas: int = 1  # copies of an acknowledged write before the ack: this node's + (replicas - 1) peers'
    takeover_after: float = 60.0  # seconds a writer may be gone before a replica holder uploads in its stead


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: a free port, published in endpoints.json
    http_port: int = 0
    cache: CacheConfig = field(default_factory=CacheConfig)
    mounts: tuple[MountConfig, ...] = ()
    default_mount: bool = True
    s3: S3Config = field(default_factory=S3Config)
    webhdfs: WebHdfsConfig = field(default_factory=WebHdfsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    writeback: WritebackConfig = field(default_factory=WritebackConfig)

    def with_overrides(self, **kw: Any) -> NodeConfig:
        cache_kw = {k: v for k, v in kw.items() if k in _names(CacheConfig) and v is not None}
        node_kw = {k: v for k, v in kw.items() if k in _names(NodeConfig) and v is not None}
        return replace(self, cache=replace(self.cache, **cache_kw), **node_kw)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_keys(d: Any, cls: type, where: str) -> None:
    """``d`` is a mapping of ``cls``'s keys only (``where``: the section, named in errors)."""
    if not isinstance(d, dict):
        raise InvalidArgument(f"{where} must be a mapping")
    unknown = set(d) - _names(cls)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_names(cls)))}")


def load(path: str) -> NodeConfig:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise InvalidArgument(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InvalidArgument(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"config file {path}: expected a mapping at the top level")
    return from_dict(raw, path)


def from_dict(raw: dict[str, Any], where: str = "config") -> NodeConfig:
    _check_keys(raw, NodeConfig, where)
    cache_raw = raw.get("cache") or {}
    _check_keys(cache_raw, CacheConfig, f"{where}: cache")
    cache_kw: dict[str, Any] = {}
    for k, v in cache_raw.items():
        if k in ("page_size", "memory_capacity", "disk_capacity", "write_behind"):
            cache_kw[k] = parse_size(v, f"cache.{k}")
        elif k in ("high_watermark", "low_watermark", "verify_window"):
            cache_kw[k] = float(v)
        elif k == "verify":
            cache_kw[k] = parse_bool(v, f"cache.{k}")
        else:
            cache_kw[k] = int(v)
    if not 0 <= cache_kw.get("verify_window", 0) <= 3600:
        raise InvalidArgument(f"{where}: cache.verify_window must be between 0 and 3600 seconds")
    mounts = []
    for i, m in enumerate(raw.get("mounts") or []):
        if not isinstance(m, dict) or "path" not in m or "uri" not in m:
            raise InvalidArgument(f"{where}: mounts[{i}] needs 'path' and 'uri'")
        _check_keys(m, MountConfig, f"{where}: mounts[{i}]")
        mounts.append(MountConfig(str(m["path"]), str(m["uri"]),
                                  {str(k): str(v) for k, v in (m.get("options") or {}).items()}))
    s3_raw = raw.get("s3") or {}
    _check_keys(s3_raw, S3Config, f"{where}: s3")
    s3_kw: dict[str, Any] = {}
    for k, v in s3_raw.items():
        if k == "access_keys":
            if not isinstance(v, dict):
                raise InvalidArgument(f"{where}: s3.access_keys must map access keys to secret keys")
            s3_kw[k] = {str(a): str(b) for a, b in v.items()}
            if any(not a.strip() or not b.strip() for a, b in s3_kw[k].items()):
                raise InvalidArgument(f"{where}: s3.access_keys has an empty access key or secret key")
        elif k == "domains":
            s3_kw[k] = tuple(str(d) for d in (v if isinstance(v, list) else [v]))
        elif k in ("enabled", "allow_anonymous"):
            s3_kw[k] = None if v is None else bool(v)
        elif k == "port":
            s3_kw[k] = int(v)
        else:
            s3_kw[k] = float(v)
    cluster = _cluster_from_dict(raw.get("cluster") or {}, where)
    webhdfs = _webhdfs_from_dict(raw.get("webhdfs") or {}, where)
    auth_raw = raw.get("auth") or {}
    _check_keys(auth_raw, AuthConfig, f"{where}: auth")
    auth = AuthConfig(file=str(auth_raw.get("file") or ""),
                      enforce=parse_bool(auth_raw.get("enforce", True), "auth.enforce"))
    tls = _tls_from_dict(raw.get("tls") or {}, where)
    limits = _limits_from_dict(raw.get("limits") or {}, where)
    writeback = _writeback_from_dict(raw.get("writeback") or {}, where)
    node_kw = {k: v for k, v in raw.items()
               if k not in ("cache", "mounts", "s3", "cluster", "webhdfs", "auth", "tls", "limits", "writeback")}
    return NodeConfig(cache=CacheConfig(**cache_kw), mounts=tuple(mounts), s3=S3Config(**s3_kw),
                      webhdfs=webhdfs, cluster=cluster, auth=auth, tls=tls, limits=limits, writeback=writeback,
                      **node_kw)


def _writeback_from_dict(raw: Any, where: str) -> WritebackConfig:
    _check_keys(raw, WritebackConfig, f"{where}: writeback")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "dir":
            kw[k] = os.path.expanduser(str(v))
            continue
        try:
            if isinstance(v, bool):
                raise ValueError
            kw[k] = parse_size(v, f"writeback.{k}") if k == "budget" else (
                int(v) if k in ("parallel", "parts", "replicas") else float(v))
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where}: writeback.{k} must be a number, got {v!r}") from None
        low = 1 if k != "retain" else 0
        if not low <= kw[k] <= (1 << 60):
            raise InvalidArgument(f"{where}: writeback.{k} must be at least {low}, got {v!r}")
    return WritebackConfig(**kw)


def _tls_from_dict(raw: Any, where: str) -> TlsConfig:
    _check_keys(raw, TlsConfig, f"{where}: tls")
    kw = {k: os.path.expanduser(str(v)) if k != "client_auth" else str(v) for k, v in raw.items() if v is not None}
    cfg = TlsConfig(**kw)
    check_tls(cfg, where)
    return cfg


def _limits_from_dict(raw: Any, where: str) -> LimitsConfig:
    _check_keys(raw, LimitsConfig, f"{where}: limits")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        integer = k.startswith("max_")
        try:
            if isinstance(v, bool):
                raise ValueError
            kw[k] = int(v) if integer else float(v)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where}: limits.{k} must be a number, got {v!r}") from None
        low = 0.0 if k == "tmp_sweep_interval" else (1 if integer else 0.1)
        if not low <= kw[k] <= 10**9:
            raise InvalidArgument(f"{where}: limits.{k} must be between {low:g} and 1e9, got {v!r}")
    return LimitsConfig(**kw)


def _webhdfs_from_dict(raw: Any, where: str) -> WebHdfsConfig:
    _check_keys(raw, WebHdfsConfig, f"{where}: webhdfs")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "users":
            if not isinstance(v, dict) or not all(str(m) in ("rw", "ro") for m in v.values()):
                raise InvalidArgument(f"{where}: webhdfs.users must map user names to rw or ro")
            kw[k] = {str(u): str(m) for u, m in v.items()}
        elif k in ("enabled", "allow_anonymous", "anonymous_writes"):
            kw[k] = bool(v)
        elif k == "proxy_users":
            if not isinstance(v, list) or not all(isinstance(u, str) and u for u in v):
                raise InvalidArgument(f"{where}: webhdfs.proxy_users must be a list of user names")
            kw[k] = tuple(v)
        elif k == "port":
            kw[k] = int(v)
        elif k == "block_size":
            kw[k] = parse_size(v, "webhdfs.block_size")
        else:
            kw[k] = str(v)
    return WebHdfsConfig(**kw)


def _cluster_from_dict(raw: Any, where: str) -> ClusterConfig:
    _check_keys(raw, ClusterConfig, f"{where}: cluster")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "etcd":
            kw[k] = tuple(str(e).strip() for e in (v if isinstance(v, list) else str(v).split(",")) if str(e).strip())
        elif k == "labels":
            if not isinstance(v, dict):
                raise InvalidArgument(f"{where}: cluster.labels must be a mapping")
            kw[k] = {str(a): str(b) for a, b in v.items()}
        elif k == "capacity":
            kw[k] = parse_size(v, "cluster.capacity")
        elif k in ("lease_ttl", "meta_port"):
            try:
                kw[k] = int(v)
            except (TypeError, ValueError):
                raise InvalidArgument(f"{where}: cluster.{k} must be an integer, got {v!r}") from None
        else:
            kw[k] = str(v)
    cfg = ClusterConfig(**kw)
    check_cluster(cfg, where)
    return cfg


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_cluster(cfg: ClusterConfig, where: str = "config") -> None:
    """Names go into etcd keys: refuse anything that could escape them."""
    for key in ("name", "region", "zone", "node_id"):
        value = getattr(cfg, key)
        if value and not _NAME.fullmatch(value):
            raise InvalidArgument(f"{where}: cluster.{key} {value!r} must be 1-63 letters, digits, "
                                  "'.', '_' or '-', starting with a letter or digit")
    if cfg.enabled:
        for key in ("name", "region"):
            if not getattr(cfg, key):
                raise InvalidArgument(f"{where}: cluster mode needs cluster.{key} (--{key if key != 'name' else 'cluster'})")
        for e in cfg.etcd:
            if not re.fullmatch(r"(https?://)?[^/:\s]+:\d+/?", e.strip()):
                raise InvalidArgument(f"{where}: etcd endpoint {e!r} is not host:port or http://host:port")
    if not 1 <= cfg.lease_ttl <= 3600:
        raise InvalidArgument(f"{where}: cluster.lease_ttl must be between 1 and 3600 seconds")
    if not 0.5 <= cfg.peer_timeout <= 600:
        raise InvalidArgument(f"{where}: cluster.peer_timeout must be between 0.5 and 600 seconds")


def parse_mount_flag(flag: str) -> MountConfig:
    """``/PATH=URI[,key=value...]`` as given to ``meshd embedded --mount``."""
    path, sep, rest = flag.partition("=")
    if not sep or not path or not rest:
        raise InvalidArgument(f"--mount {flag!r}: expected /PATH=URI[,key=value...]")
    uri, *opts = rest.split(",")
    options = {}
    for n, o in enumerate(opts, 1):
        k, s, v = o.partition("=")
        if not s:  # the flag is not echoed: it may hold a secret (and a comma inside one)
            raise InvalidArgument(f"--mount {path}: option {n} is not key=value (values cannot hold "
                                  "a comma; give such a secret as <option>_file=/path)")
        options[k] = v
    return MountConfig(path, uri, options)
