"""Who is asking, and what they may do: one model for every front end.

Principals (:class:`Principal`):

- ``operator``: the node's owner. Any local connection from the user running
  meshd (or root), found by :mod:`meshd.auth.peer`; or a client presenting an
  operator token (``DATA_DIR/credentials.json``, made on first start; or a
  token listed under ``operators`` in the access file); or an S3 key of
  ``s3.access_keys``.
- ``node``: another node of the cluster (the cluster token: see
  :mod:`meshd.auth.credentials`). Nodes and operators may do everything.
- ``tenant``: a token, S3 key or WebHDFS user listed under a tenant of the
  access file. A tenant may do what its rules allow, nothing else.
- ``anonymous``: no credential. Refused everywhere, except where the operator
  opened a door on purpose (``s3.allow_anonymous: true``; WebHDFS simple auth
  for listed users).

Every front end authenticates a request to a principal and serves the request
as it (:meth:`Access.serving`); the core's facade (:class:`meshd.core.node.MeshNode`) checks
each operation against :class:`Access` (``read`` < ``write`` < ``admin``, the
longest matching path rule of the tenant wins). Work the node starts itself
(background loads, peers' page fetches it serves) runs as ``system``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshd import paths
from meshd.auth.peer import is_owner, tcp_peer_uid
from meshd.errors import InvalidArgument, PermissionDenied
from meshd.limits import InFlight

log = logging.getLogger(__name__)

NONE, READ, WRITE, ADMIN = 0, 1, 2, 3
LEVELS = {"none": NONE, "read": READ, "write": WRITE, "admin": ADMIN}
NAMES = {v: k for k, v in LEVELS.items()}


@dataclass(frozen=True)
class Principal:
    kind: str  # operator | node | tenant | anonymous | system
    name: str
    tenant: str = ""

    @property
    def trusted(self) -> bool:
        """Operators, nodes and the node itself may do everything."""
        return self.kind in ("operator", "node", "system")

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" (tenant {self.tenant})" if self.tenant else "")


SYSTEM = Principal("system", "meshd")
ANONYMOUS = Principal("anonymous", "anonymous")
OPERATOR = Principal("operator", "owner")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("mesh_principal", default=SYSTEM)


def current() -> Principal:
    """The principal the running request acts as (``system`` outside any request)."""
    return _current.get()


def set_current(p: Principal) -> None:
    """For a task that serves one request from start to end (an aiohttp handler, a wire
    call): its context is its own, nothing to reset."""
    _current.set(p)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Rule:
    path: str
    level: int


@dataclass
class Tenant:
    name: str
    rules: list[Rule] = field(default_factory=list)
    token_hashes: set[str] = field(default_factory=set)
    s3_keys: dict[str, str] = field(default_factory=dict)
    webhdfs_users: set[str] = field(default_factory=set)
    certificates: set[str] = field(default_factory=set)  # client certificate CNs (mutual TLS)

    def level(self, path: str) -> int:
        """The longest rule at or above ``path`` decides (of two for the same path, the later)."""
        best, best_len = NONE, -1
        for r in self.rules:
            if paths.is_within(path, r.path) and len(r.path) >= best_len:  # deeper, or listed later
                best, best_len = r.level, len(r.path)
        return best

    def sees(self, path: str) -> bool:
        """``path`` leads to something the tenant may read (it is readable, or lies above
        a readable rule): it may appear in listings and be listed."""
        if self.level(path) >= READ:
            return True
        return any(r.level >= READ and paths.is_within(r.path, path) for r in self.rules)


def _read_secret(spec: Any, where: str) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        (k, v), = spec.items()
        if k == "secret":
            return str(v)
        if k == "secret_file":
            try:
                with open(str(v)) as f:
                    return f.read().strip()
            except OSError as e:
                raise InvalidArgument(f"{where}: cannot read {v}: {e.strerror}") from None
        if k == "secret_env":
            value = os.environ.get(str(v))
            if not value:
                raise InvalidArgument(f"{where}: environment variable {v} is not set")
            return value
    raise InvalidArgument(f"{where}: expected a secret, or one of secret / secret_file / secret_env")


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument(f"{where}: expected a list")
    return raw


def _hash(value: Any, where: str) -> str:
    v = str(value).strip()
    if v.startswith("sha256:") and len(v) == 71:
        return v
    raise InvalidArgument(f"{where}: tokens are listed by hash, sha256:<64 hex digits> "
                          "(`meshctl token new` prints a token and its hash)")


def parse_access(raw: Any, where: str) -> tuple[dict[str, Tenant], set[str]]:
    """The access file: ``{operators: [hash...], tenants: {name: {tokens, s3_keys,
    webhdfs_users, rules: [{path, allow}]}}}``. Unknown keys are refused by name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected a mapping")
    unknown = set(raw) - {"operators", "tenants"}
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: operators, tenants")
    operators = {_hash(h, f"{where}: operators") for h in _list(raw.get("operators"), f"{where}: operators")}
    tenants: dict[str, Tenant] = {}
    traw = raw.get("tenants") or {}
    if not isinstance(traw, dict):
        raise InvalidArgument(f"{where}: tenants must map tenant names to their credentials and rules")
    seen_keys: set[str] = set()
    for name, t in traw.items():
        w = f"{where}: tenants.{name}"
        if not isinstance(t, dict):
            raise InvalidArgument(f"{w}: expected a mapping")
        unknown = set(t) - {"tokens", "s3_keys", "webhdfs_users", "certificates", "rules"}
        if unknown:
            raise InvalidArgument(f"{w}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  "known: certificates, rules, s3_keys, tokens, webhdfs_users")
        tenant = Tenant(str(name))
        tenant.token_hashes = {_hash(h, f"{w}.tokens") for h in _list(t.get("tokens"), f"{w}.tokens")}
        keys = t.get("s3_keys") or {}
        if not isinstance(keys, dict):
            raise InvalidArgument(f"{w}.s3_keys: expected a mapping of access key to secret")
        for ak, spec in keys.items():
            secret = _read_secret(spec, f"{w}.s3_keys.{ak}")
            if not str(ak).strip() or not secret.strip():
                raise InvalidArgument(f"{w}.s3_keys: an empty access key or secret key")
            if str(ak) in seen_keys:
                raise InvalidArgument(f"{w}.s3_keys: access key {ak} belongs to two tenants")
            seen_keys.add(str(ak))
            tenant.s3_keys[str(ak)] = secret
        tenant.webhdfs_users = {str(u) for u in _list(t.get("webhdfs_users"), f"{w}.webhdfs_users")}
        tenant.certificates = {str(u) for u in _list(t.get("certificates"), f"{w}.certificates")}
        for i, r in enumerate(_list(t.get("rules"), f"{w}.rules")):
            if not isinstance(r, dict) or set(r) != {"path", "allow"}:
                raise InvalidArgument(f"{w}.rules[{i}]: expected {{path: /mesh/path, allow: read|write|admin|none}}")
            level = LEVELS.get(str(r["allow"]).lower())
            if level is None:
                raise InvalidArgument(f"{w}.rules[{i}]: allow must be read, write, admin or none, not {r['allow']!r}")
            tenant.rules.append(Rule(paths.normalize(str(r["path"])), level))
        tenants[tenant.name] = tenant
    return tenants, operators


class Access:
    """The node's credentials and rules. ``file``: the access file (YAML), read again
    whenever it changes (``refresh``, called by the daemon every second): rules and
    tenants change without a restart. A file that stops parsing keeps the last good
    rules, with a line in the log."""

    def __init__(self, operator_hashes: set[str] | None = None, node_hashes: set[str] | None = None,
                 operator_keys: dict[str, str] | None = None, file: str = "",
                 enforce: bool = True,
                 max_in_flight_per_tenant: int = 4096) -> None:
        self.enforce = enforce
        self.tenant_slots = InFlight(max_in_flight_per_tenant, "requests")  # per tenant, all listeners
        self._operator_hashes = set(operator_hashes or ())
        self._node_hashes = set(node_hashes or ())
        self.operator_keys = dict(operator_keys or {})  # S3 access key -> secret (operator)
        self.file = file
        self.tenants: dict[str, Tenant] = {}
        self._file_operators: set[str] = set()
        self._stamp: tuple[float, int] | None = None
        if file:
            self.load()

    # ---- the access file ---------------------------------------------------

    def load(self) -> None:
        """Read the access file (InvalidArgument naming the problem)."""
        try:
            st = os.stat(self.file)
            with open(self.file) as f:
                raw = yaml.safe_load(f)
        except OSError as e:
            raise InvalidArgument(f"cannot read access file {self.file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise InvalidArgument(f"access file {self.file} is not valid YAML: {e}") from None
        self.tenants, self._file_operators = parse_access(raw, f"access file {self.file}")
        self._stamp = (st.st_mtime, st.st_size)

    def refresh(self) -> bool:
        """Reload the access file if it changed; True when new rules are in force."""
        if not self.file:
            return False
        try:
            st = os.stat(self.file)
        except OSError:
            return False
        if (st.st_mtime, st.st_size) == self._stamp:
            return False
        try:
            self.load()
        except InvalidArgument as e:
            self._stamp = (st.st_mtime, st.st_size)  # one line per bad version, not one a second
            log.error("%s; keeping the previous rules", e)
            return False
        log.info("access file %s reloaded: %d tenant(s)", self.file, len(self.tenants))
        return True

    @contextlib.contextmanager
    def serving(self, p: Principal) -> Iterator[None]:
        """Run a request as ``p``: the current principal, and one of its tenant's slots
        (``limits.max_in_flight_per_tenant`` across every listener; SlowDown when all are
        taken). Operators and nodes are not capped here (per-client caps still apply)."""
        token = _current.set(p)
        try:
            if p.kind == "tenant":
                with self.tenant_slots.slot(f"tenant {p.tenant}"):
                    yield
            else:
                yield
        finally:
            _current.reset(token)

    # ---- authentication ---------------------------------------------------

    def by_token(self, token: str) -> Principal | None:
        if not token:
            return None
        h = token_hash(token)
        if any(hmac.compare_digest(h, x) for x in self._node_hashes):
            return Principal("node", "cluster")
        if any(hmac.compare_digest(h, x) for x in self._operator_hashes | self._file_operators):
            return Principal("operator", "token")
        for t in self.tenants.values():
            if any(hmac.compare_digest(h, x) for x in t.token_hashes):
                return Principal("tenant", f"token of {t.name}", t.name)
        return None

    def local(self, peer: tuple[str, int] | None, local: tuple[str, int] | None) -> Principal:
        """A connection with no credential: OPERATOR when it comes from the node's own user
        (or root) on this machine, else ANONYMOUS; OPERATOR for everyone when enforcement
        is off (``auth.enforce: false``: measuring only)."""
        if not self.enforce:
            return OPERATOR
        return OPERATOR if is_owner(tcp_peer_uid(peer, local)) else ANONYMOUS

    def by_certificate(self, cn: str | None) -> Principal | None:
        """A client certificate the node verified against the cluster CA (mutual TLS): a
        tenant's if its CN is listed under one, else an operator's (the CA is the
        operator's: every certificate it issued was granted by one)."""
        if not cn:
            return None
        for t in self.tenants.values():
            if cn in t.certificates:
                return Principal("tenant", f"certificate {cn}", t.name)
        return Principal("operator", f"certificate {cn}")

    def s3_key(self, access_key: str) -> tuple[str, Principal] | None:
        """(secret, principal) of an S3 access key."""
        secret = self.operator_keys.get(access_key)
        if secret is not None:
            return secret, Principal("operator", f"s3 key {access_key}")
        for t in self.tenants.values():
            secret = t.s3_keys.get(access_key)
            if secret is not None:
                return secret, Principal("tenant", f"s3 key {access_key}", t.name)
        return None

    def has_s3_keys(self) -> bool:
        return bool(self.operator_keys) or any(t.s3_keys for t in self.tenants.values())

    def webhdfs_user(self, user: str) -> Principal | None:
        for t in self.tenants.values():
            if user in t.webhdfs_users:
                return Principal("tenant", f"webhdfs user {user}", t.name)
        return None

    # ---- authorisation ----------------------------------------------------

    def level(self, p: Principal, path: str) -> int:
        if p.trusted or not self.enforce:
            return ADMIN
        t = self.tenants.get(p.tenant) if p.kind == "tenant" else None
        return t.level(path) if t is not None else NONE

    def allowed(self, p: Principal, level: int, path: str) -> bool:
        return self.level(p, path) >= level

    def check(self, level: int, path: str, p: Principal | None = None) -> None:
        """PermissionDenied unless the current principal (or ``p``) may act at ``level`` on
        ``path``. Messages name the mesh path and what was missing, never a credential."""
        p = p or current()
        if self.allowed(p, level, path):
            return
        if p.kind == "anonymous":
            raise PermissionDenied(f"{path}: this request carries no credential "
                                   "(see THREAT_MODEL.md: tokens, S3 keys, WebHDFS users)")
        raise PermissionDenied(f"{path}: {p} may not {NAMES[level]} here")

    def sees(self, path: str, p: Principal | None = None) -> bool:
        p = p or current()
        if p.trusted or not self.enforce:
            return True
        t = self.tenants.get(p.tenant) if p.kind == "tenant" else None
        return t is not None and t.sees(path)

    def check_list(self, path: str) -> bool:
        """May the current principal list ``path``? True: everything in it may be shown;
        False: only the entries leading to readable paths (filter with :meth:`sees`).
        PermissionDenied when nothing under it is readable."""
        if self.allowed(current(), READ, path):
            return True
        if self.sees(path):
            return False
        self.check(READ, path)
        return False


OPEN = Access(enforce=False)  # a node built without credentials (unit tests of the core)
