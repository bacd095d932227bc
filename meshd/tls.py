"""TLS for a node's TCP listeners and for the connections to them (docs/TLS.md).

Three parts:

- **Certificates** (``meshd certs``): a cluster CA made once
  (``DIR/ca.pem``, ``DIR/ca.key`` mode 0600), node certificates
  (``serverAuth`` + ``clientAuth``: a node is a server to clients and a client of its
  peers; SANs name the hosts and addresses it is reached at) and client
  certificates (``clientAuth``). Made with ``cryptography``; an operator's own CA
  works just as well, nothing here depends on how the files were made.
- **Contexts**: the one server :class:`ssl.SSLContext` every aiohttp and
  metadata-wire listener uses, the gRPC server credentials from the same files, and
  the client side (a node towards its peers: mutual TLS with its node certificate;
  meshctl, meshfs, the SDK and ``mesh://`` with the CA and an optional client
  certificate, :func:`find_client_tls`).
- **Identity**: :func:`peer_identity` gives the verified peer certificate's subject
  CN of an aiohttp request, an asyncio transport, an SSL socket or a gRPC servicer
  context (``None`` without TLS, or when the peer sent no certificate).

A cluster is all TLS or all plain text: a node with TLS configured reaches every peer
over TLS, and its ``endpoints.json`` says so (``"tls"`` key, ``https://`` URLs).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshd.errors import InvalidArgument

if TYPE_CHECKING:
    from meshd.config import TlsConfig

CLIENT_AUTH = ("required", "optional", "none")
_VERIFY = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


# ---- certificates (meshd certs) -----------------------------------------------------


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path + ".tmp", mode)  # an existing .tmp keeps its mode through O_CREAT
    os.replace(path + ".tmp", path)


def init_ca(directory: str, name: str = "meshd cluster CA", days: int = 3650, force: bool = False) -> str:
    """Create ``DIR/ca.pem`` and ``DIR/ca.key`` (0600; the directory 0700); returns ca.pem's path.
    Refuses to replace an existing CA unless ``force`` (certificates it issued would stop working)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if os.path.exists(key_path) and not force:
        raise InvalidArgument(f"{key_path} exists: a cluster CA is already there (--force replaces it, "
                              "and every certificate it issued stops working)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def issue(directory: str, name: str, hosts: list[str] | tuple[str, ...] = (), client_only: bool = False,
          days: int = 825) -> tuple[str, str]:
    """Issue ``DIR/NAME.pem`` and ``DIR/NAME.key`` (0600) from the CA in ``DIR``; returns their paths.

    A node certificate (``client_only`` false) is for ``serverAuth`` and ``clientAuth``,
    with SANs ``hosts`` (names and IP addresses) plus ``localhost``, ``127.0.0.1`` and
    ``::1``; a client certificate is for ``clientAuth`` only. The subject CN is ``name``:
    what :func:`peer_identity` reports for its holder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"certificate name {name!r}: give a plain name (it becomes NAME.pem)")
    if name == "ca":
        raise InvalidArgument("certificate name 'ca' is the CA's own file name: pick another")
    try:
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            ca_key: Any = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError as e:
        raise InvalidArgument(f"no cluster CA in {directory} ({e.filename} missing): "
                              f"run `meshd certs init --dir {directory}` first") from None
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in ([] if client_only else [*hosts, "localhost", "127.0.0.1", "::1"]):
        h = h.strip().strip("[]")
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_only else [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


# ---- contexts -----------------------------------------------------------------------


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"{what}: cannot load certificate {cert} with key {key}: {e}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"{what}: cannot load CA certificate {ca}: {e}") from None


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The context of every aiohttp and metadata-wire listener: the node's certificate;
    client certificates verified against the CA as ``client_auth`` says."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cfg.cert, cfg.key, "tls")
    if cfg.ca:
        _load_ca(ctx, cfg.ca, "tls")
    ctx.verify_mode = _VERIFY[cfg.client_auth] if cfg.ca else ssl.CERT_NONE
    return ctx


def client_context(ca: str | None, cert: str | None = None, key: str | None = None,
                   what: str = "tls") -> ssl.SSLContext:
    """A client's context: the server verified against ``ca`` (the system's roots when
    None) and its host name; ``cert``/``key`` presented when the server asks."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(ctx, ca, what)
    if cert:
        _load_chain(ctx, cert, key or cert, what)
    return ctx


def node_client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A node towards its peers: mutual TLS with its own (serverAuth + clientAuth) certificate."""
    return client_context(cfg.ca or None, cfg.cert, cfg.key)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InvalidArgument(f"{what}: cannot read {path}: {e.strerror}") from None


def grpc_server_credentials(cfg: TlsConfig) -> Any:
    """gRPC's credentials from the same files. gRPC asks for a client certificate only
    when ``client_auth`` is ``required`` (it has no "optional": there, it asks for none)."""
    import grpc

    require = cfg.client_auth == "required" and bool(cfg.ca)
    return grpc.ssl_server_credentials([(_read(cfg.key, "tls.key"), _read(cfg.cert, "tls.cert"))],
                                       root_certificates=_read(cfg.ca, "tls.ca") if cfg.ca else None,
                                       require_client_auth=require)


# ---- identity -----------------------------------------------------------------------


def _cn(peercert: Any) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def peer_identity(obj: Any) -> str | None:
    """The subject CN of the verified certificate the peer presented, or None (no TLS, or
    no certificate). ``obj``: an aiohttp request, an asyncio transport, an
    :class:`ssl.SSLSocket`, or a gRPC servicer context (sync or aio)."""
    if obj is None:
        return None
    auth_context = getattr(obj, "auth_context", None)
    if callable(auth_context):  # gRPC: x509_common_name is there only for a verified peer
        names = (auth_context() or {}).get("x509_common_name") or []
        return names[0].decode() if names else None
    if isinstance(obj, ssl.SSLSocket):
        return _cn(obj.getpeercert())
    transport = getattr(obj, "transport", None) if not hasattr(obj, "get_extra_info") else obj
    if transport is None or not hasattr(transport, "get_extra_info"):
        return None
    return _cn(transport.get_extra_info("peercert"))


# ---- clients ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTLS:
    """How a client reaches TLS nodes: the CA to verify them with, and the client
    certificate to present (optional unless the nodes require one)."""

    ca: str | None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key, "client TLS")

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            private_key=_read(self.key or self.cert, "client key") if self.cert else None,
            certificate_chain=_read(self.cert, "client certificate") if self.cert else None)


def _endpoints_file(endpoint: str | None) -> str | None:
    from meshd.config import default_data_dir

    candidate = endpoint or os.environ.get("MESH_ENDPOINT") or default_data_dir()
    if "://" in candidate:
        return None
    if candidate.endswith(".json"):
        return candidate
    if "/" in candidate:
        return os.path.join(candidate, "endpoints.json")
    return None


def find_client_tls(endpoint: str | None = None) -> ClientTLS | None:
    """Whether and how a client speaks TLS to the node at ``endpoint`` (as given to
    ``MeshClient``: an address, a data directory or endpoints.json; None: the default).

    TLS when ``$MESH_TLS_CA`` is set, when the endpoint is ``grpcs://host:port``, or when
    the node's ``endpoints.json`` has a ``"tls"`` key. The CA: ``$MESH_TLS_CA``, else
    ``tls/ca.pem`` beside endpoints.json (the node puts its CA there), else the system's
    roots. The client certificate: ``$MESH_TLS_CERT`` / ``$MESH_TLS_KEY``, else
    ``tls/client.pem`` / ``tls/client.key`` beside endpoints.json when present.
    None: plain text, as without TLS configured anywhere."""
    env_ca = os.environ.get("MESH_TLS_CA") or None
    cert = os.environ.get("MESH_TLS_CERT") or None
    key = os.environ.get("MESH_TLS_KEY") or None
    wanted = bool(env_ca) or (endpoint or os.environ.get("MESH_ENDPOINT") or "").startswith("grpcs://")
    beside: str | None = None
    path = _endpoints_file(endpoint)
    if path is not None:
        try:
            with open(path) as f:
                doc = json.load(f)
            if isinstance(doc, dict) and doc.get("tls"):
                wanted = True
        except (OSError, ValueError):
            pass
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "tls")
    if not wanted:
        return None
    ca = env_ca
    if ca is None and beside is not None and os.path.exists(os.path.join(beside, "ca.pem")):
        ca = os.path.join(beside, "ca.pem")
    if cert is None and beside is not None and os.path.exists(os.path.join(beside, "client.pem")):
        cert, key = os.path.join(beside, "client.pem"), os.path.join(beside, "client.key")
    return ClientTLS(ca, cert, key or cert)


def add_client_flags(parser: Any) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` on a client command (meshctl, meshfs)."""
    parser.add_argument("--tls-ca", help="verify TLS nodes against this CA ($MESH_TLS_CA; default: "
                        "DATA_DIR/tls/ca.pem when the node's endpoints.json says tls)")
    parser.add_argument("--tls-cert", help="client certificate for nodes that require one ($MESH_TLS_CERT)")
    parser.add_argument("--tls-key", help="its key ($MESH_TLS_KEY)")


def apply_client_flags(args: Any) -> None:
    """The flags of :func:`add_client_flags` win over the environment, for every client made after."""
    for flag, env in (("tls_ca", "MESH_TLS_CA"), ("tls_cert", "MESH_TLS_CERT"), ("tls_key", "MESH_TLS_KEY")):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = os.path.abspath(value)


__all__ = ["CLIENT_AUTH", "ClientTLS", "add_client_flags", "apply_client_flags", "client_context",
           "find_client_tls", "grpc_server_credentials", "init_ca", "issue", "node_client_context",
           "peer_identity", "server_context"]
