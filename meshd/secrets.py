"""Secrets of the mount table: never in clear text in RocksDB, etcd, logs or messages.

A mount option is *secret* when its name is in :data:`SECRET_OPTIONS` and the mount's
under-store takes it. A secret option ``X`` is given one of three ways (at most one):

- ``X=value`` (inline): stored encrypted, ``enc:v1:<key id>:<base64(nonce + ciphertext)>``
  (AES-256-GCM, the option's name as associated data), with the node's *secrets key*:
  ``DATA_DIR/secrets.key`` in embedded mode (created 0600 on first start, outside the
  RocksDB directory), ``cluster.secrets_key_file`` in cluster mode (the same file on every
  node; without one, an inline secret is refused: :data:`NO_KEY_HINT`).
- ``X_file=/path``: the node reads the file (one trailing newline dropped) when it opens
  the store; only the reference is stored.
- ``X_env=NAME``: the node's environment variable ``NAME``, read likewise.

The mount table keeps the stored form (sealed values and references); :func:`unseal`
turns it into the options a store opens with, in memory only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping

from meshd.errors import InvalidArgument, MountError

log = logging.getLogger("meshd.secrets")

SECRET_OPTIONS = frozenset({"access_key", "secret_key", "session_token", "password", "token"})
REFERENCES = ("_file", "_env")
SEALED = "enc:v1:"
KEY_FILE = "secrets.key"  # in the data directory (embedded mode)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

NO_KEY_HINT = ("this node has no secrets key to encrypt them with (cluster mode: every node needs the "
               "same key file, cluster.secrets_key_file / --secrets-key-file); give the key file, or "
               "give references instead, which each node resolves itself: {refs}")


def secret_options(known: Iterable[str]) -> frozenset[str]:
    """The secret options among the options a store takes."""
    return SECRET_OPTIONS & frozenset(known)


def reference_options(known: Iterable[str]) -> frozenset[str]:
    """The reference options (``X_file``, ``X_env``) for the secret options of ``known``."""
    return frozenset(s + r for s in secret_options(known) for r in REFERENCES)


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED)


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """Options as shown to people: secret values ``***``, references as they are."""
    return {k: ("***" if k in SECRET_OPTIONS else v) for k, v in options.items()}


def check_references(options: Mapping[str, str]) -> None:
    """MountError when a secret is given twice (inline and by reference) or a reference is
    malformed. Names of options are already known to be ones the store takes."""
    for name in SECRET_OPTIONS:
        given = [k for k in (name, name + "_file", name + "_env") if k in options]
        if len(given) > 1:
            raise MountError(f"options {' and '.join(given)} both give {name}: give one")
        ref = options.get(name + "_file")
        if ref is not None and not os.path.isabs(ref):
            raise MountError(f"option {name}_file must be an absolute path (of a file on every node)")
        env = options.get(name + "_env")
        if env is not None and not _ENV_NAME.fullmatch(env):
            raise MountError(f"option {name}_env must name an environment variable, got {env!r}")


class SecretsKey:
    """The AES-256 key that seals a node's inline mount secrets."""

    def __init__(self, key: bytes, source: str) -> None:
        # imported here: the client side (meshctl, mesh://) imports the mount table's helpers
        # but is installed without the server extra, which brings cryptography
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise InvalidArgument(f"secrets key {source}: expected 32 bytes (base64), got {len(key)}")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(key).hexdigest()[:8]  # names the key in messages, reveals nothing
        self.source = source

    def __repr__(self) -> str:
        return f"SecretsKey(id={self.id}, source={self.source})"

    @classmethod
    def load(cls, path: str) -> SecretsKey:
        """The key in ``path``: base64 of 32 random bytes (``openssl rand -base64 32``)."""
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                text = f.read(4096).strip()
        except OSError as e:
            raise InvalidArgument(f"cannot read the secrets key file {path}: {e.strerror}") from None
        if st.st_mode & 0o077:
            try:
                if st.st_uid != os.geteuid():
                    raise PermissionError
                os.chmod(path, 0o600)
                log.warning("secrets key file %s was mode %o: made it 0600", path, st.st_mode & 0o777)
            except OSError:
                log.warning("secrets key file %s is mode %o: other users may read it; make it 0600",
                            path, st.st_mode & 0o777)
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            try:
                key = base64.urlsafe_b64decode(text)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"secrets key file {path}: not base64 of 32 bytes "
                                      "(make one with: openssl rand -base64 32)") from None
        return cls(key, path)

    @classmethod
    def load_or_create(cls, path: str) -> SecretsKey:
        """The key in ``path``, created (0600, 32 random bytes) when there is none."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls.load(path)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(32)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("created the secrets key %s (mount secrets are encrypted with it; keep it "
                 "with the data directory)", path)
        return cls.load(path)

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(12)
        box = self._aead.encrypt(nonce, value.encode(), name.encode())
        return f"{SEALED}{self.id}:{base64.urlsafe_b64encode(nonce + box).decode()}"

    def unseal(self, name: str, token: str, where: str) -> str:
        from cryptography.exceptions import InvalidTag

        kid, _, body = token[len(SEALED):].partition(":")
        if kid != self.id:
            raise MountError(f"mount {where}: option {name} is encrypted with the secrets key {kid}, "
                             f"this node's is {self.id}: give every node the same key")
        try:
            raw = base64.urlsafe_b64decode(body)
            return self._aead.decrypt(raw[:12], raw[12:], name.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise MountError(f"mount {where}: option {name} does not decrypt with the secrets key "
                             f"{self.id}: damaged; give the secret again (meshctl mount rm, then mount add)") from None


def has_clear(options: Mapping[str, str]) -> bool:
    """Whether some secret option holds a value in clear text."""
    return any(k in SECRET_OPTIONS and v and not is_sealed(v) for k, v in options.items())


def seal(options: Mapping[str, str], key: SecretsKey | None, where: str) -> dict[str, str]:
    """``options`` as stored: inline secret values sealed (already sealed ones kept).
    MountError when there is one to seal and no key."""
    inline = sorted(k for k, v in options.items() if k in SECRET_OPTIONS and v and not is_sealed(v))
    if inline and key is None:
        refs = ", ".join(f"{k}_file=/path or {k}_env=VARIABLE" for k in inline)
        raise MountError(f"mount {where}: secret options given inline ({', '.join(inline)}); "
                         + NO_KEY_HINT.format(refs=refs))
    out = dict(options)
    for k in inline:
        assert key is not None
        out[k] = key.seal(k, options[k])
    return out


def _read_secret_file(path: str, name: str, where: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read(65536)
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise MountError(f"mount {where}: cannot read {name}_file {path}: {why}") from None
    return value[:-1] if value.endswith("\n") else value


def unseal(options: Mapping[str, str], key: SecretsKey | None, where: str) -> dict[str, str]:
    """The options a store opens with: sealed values decrypted, references resolved (in
    memory only). MountError, naming the mount and the option (never a value), when one
    cannot be."""
    out: dict[str, str] = {}
    for k, v in options.items():
        base, ref = k, ""
        for suffix in REFERENCES:
            if k.endswith(suffix) and k[: -len(suffix)] in SECRET_OPTIONS:
                base, ref = k[: -len(suffix)], suffix
        if ref == "_file":
            out[base] = _read_secret_file(v, base, where)
        elif ref == "_env":
            value = os.environ.get(v)
            if value is None:
                raise MountError(f"mount {where}: {base}_env names {v}, which is not set in the "
                                 "node's environment")
            out[base] = value
        elif k in SECRET_OPTIONS and is_sealed(v):
            if key is None:
                raise MountError(f"mount {where}: option {k} is encrypted and this node has no secrets "
                                 "key: give it the cluster's key file (cluster.secrets_key_file)")
            out[k] = key.unseal(k, v, where)
        else:
            out[k] = v
    return out
